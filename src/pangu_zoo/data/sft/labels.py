"""Token ids and labels of one conversation, as the openPangu demo's SFT handler makes them (formats.md §6.4).

The chat template's segments (`chat_template.template_segments`) are encoded one by one, markers as their
single ids: the system part (all system turns, after the tokenizer's BOS when it has one), each user or tool
turn and each assistant prefix `<turn start>助手：` get label -100; each assistant `<content><turn end>` is
trained, its labels equal to its ids. With `append_eod` the end-of-document id follows, label -100.

A tokenizer that adds a BOS exposes it as `bos_id`; the released PanGu-alpha and GPT-2 tokenizers add none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from pangu_zoo.data.sft.chat_template import template_segments
from pangu_zoo.data.sft.conversations import Conversation
from pangu_zoo.data.sft.markers import ChatMarkers, MarkerEncoder

IGNORE_INDEX = -100  # label of a token the loss skips
CHUNK = 256  # conversations whose texts go to the tokenizer workers at once


class SampleEncoder:
    """Conversations -> (input_ids, labels), int32 arrays of equal length.

    Args:
        tokenizer: any `pangu_zoo.tokenizers.Tokenizer`.
        markers: the turn start/end pieces (`markers.markers_for(tokenizer)`).
        append_eod: append the tokenizer's end-of-document id (its `document_separator_id`) with label -100.
    """

    def __init__(self, tokenizer, markers: ChatMarkers, append_eod: bool = False):
        self.tokenizer, self.markers = tokenizer, markers
        self.marker_encoder = MarkerEncoder(tokenizer, markers)
        self.bos_id = getattr(tokenizer, "bos_id", None)
        self.eod_id = tokenizer.document_separator_id if append_eod else None

    def _layout(self, conversation: Conversation) -> list[tuple[list[str | int], bool]]:
        """Each segment as plain-text parts and marker ids, with its trained flag."""
        return [(self.marker_encoder.split(text), trained)
                for text, trained in template_segments(conversation.messages(), self.markers)]

    def _assemble(self, layout, encoded: Iterator[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.bos_id] if self.bos_id is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        for parts, trained in layout:
            segment = [token for part in parts for token in ([part] if isinstance(part, int) else next(encoded))]
            ids += segment
            labels += segment if trained else [IGNORE_INDEX] * len(segment)
        if self.eod_id is not None:
            ids.append(self.eod_id)
            labels.append(IGNORE_INDEX)
        return np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)

    def encode_all(self, conversations: Iterable[Conversation], pool=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(input_ids, labels) of each conversation, in order; the text is tokenised by `pool` (an
        `EncodePool`) when given, else in this process."""
        conversations = iter(conversations)
        while chunk := list(islice(conversations, CHUNK)):
            layouts = [self._layout(conversation) for conversation in chunk]
            texts = [part for layout in layouts for parts, _ in layout for part in parts if isinstance(part, str)]
            encoded = iter(pool.imap(texts) if pool is not None else self.tokenizer.encode_many(texts))
            for layout in layouts:
                yield self._assemble(layout, encoded)

    def encode(self, conversation: Conversation) -> tuple[np.ndarray, np.ndarray]:
        return next(self.encode_all([conversation]))
