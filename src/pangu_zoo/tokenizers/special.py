"""Special pieces: the ids that end a generated text and the pieces that are never printed.

predict.py, the server and the export all follow these rules, so they live with the tokenizers rather than
in any one command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pangu_zoo.errors import InputError

# pieces that mark structure, not text: never printed (PanGu-alpha's vocabulary, then GPT-2's)
SPECIAL_PIECES = ("<s>", "</s>", "<sep>", "<pad>", "<eod>", "<eot>", "<|endoftext|>")


def default_end_tokens(tokenizer) -> tuple[int, ...]:
    """`<eot>` and the document separator (the same id for GPT-2): a model trained on separated documents
    (the demo, PanGu-alpha's `<pad>` 6) ends a text with the separator, so stopping at `<eot>` alone runs on."""
    return tuple(dict.fromkeys((tokenizer.eot_id, tokenizer.document_separator_id)))


def special_ids(tokenizer) -> set[int]:
    """Ids of the `SPECIAL_PIECES` this tokenizer's vocabulary has, and of the special tokens it lists itself
    (openPangu's `[unusedN]` markers)."""
    found = set(getattr(tokenizer, "special_token_ids", ()))
    for piece in SPECIAL_PIECES:
        try:
            found.add(tokenizer.token_to_id(piece))
        except InputError:
            continue
    return found


def output_text(tokenizer, ids: list[int]) -> str:
    """The decoded text of `ids` without special pieces (`<pad>`, `<eot>`, ...)."""
    hidden = special_ids(tokenizer)
    return tokenizer.decode([i for i in ids if i not in hidden])


def split_on_pieces(text: str, pieces: Iterable[str]) -> list[str]:
    """`text` cut before and after every occurrence of any of `pieces` (longest first where two start at the
    same place); the pieces are kept as their own items and empty strings are dropped."""
    ordered = sorted({piece for piece in pieces if piece}, key=len, reverse=True)
    if not ordered:
        return [text] if text else []
    pattern = re.compile("(" + "|".join(map(re.escape, ordered)) + ")")
    return [part for part in pattern.split(text) if part]


def encode_with_pieces(tokenizer, text: str, pieces: Iterable[str]) -> list[int]:
    """Token ids of `text` where every occurrence of one of `pieces` (vocabulary pieces such as `<sep>`) is its
    own single id, looked up by piece, and the text between them is encoded as usual.

    The tokenizers encode special pieces written in the text as plain characters (jieba cuts `<eot>` into
    '<', 'eot', '>'), so text that holds them is split on them first, as Hugging Face tokenizers split on
    their added tokens."""
    pieces = set(pieces)
    ids: list[int] = []
    for part in split_on_pieces(text, pieces):
        ids.extend([tokenizer.token_to_id(part)] if part in pieces else tokenizer.encode(part))
    return ids
