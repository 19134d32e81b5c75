"""Chat markers: the pieces that open and close every turn of the chat template, bound to a tokenizer.

openPangu's vocabulary has `[unused9]` / `[unused10]` for this (formats.md §6.3); PanGu-alpha's 40k
SentencePiece vocabulary and GPT-2's do not, so each tokenizer kind has its own defaults, and both markers can
be set. A marker that is one vocabulary piece is encoded as that single id wherever it occurs in a text (the
text is split on it); one that is not is ordinary text. The turn end must be a single id: generation stops on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pangu_zoo.errors import ConfigError, InputError
from pangu_zoo.tokenizers.special import encode_with_pieces, split_on_pieces


@dataclass(frozen=True)
class ChatMarkers:
    """The text that opens a turn (`turn_start`) and the piece that closes it (`turn_end`)."""

    turn_start: str
    turn_end: str


OPENPANGU_MARKERS = ChatMarkers("[unused9]", "[unused10]")
# per tokenizer kind, for vocabularies without [unused9]/[unused10]:
# PanGu-alpha: two control pieces its pretraining never used inside text (<sep> 5, <eot> 9);
# GPT-2: one special piece only, so a turn starts on a new line (plain text) and ends with <|endoftext|>.
DEFAULT_MARKERS = {
    "pangu-alpha": ChatMarkers("<sep>", "<eot>"),
    "gpt2": ChatMarkers("\n", "<|endoftext|>"),
}


def _piece_id(tokenizer, piece: str) -> int | None:
    if not piece:
        return None
    try:
        return tokenizer.token_to_id(piece)
    except InputError:
        return None


def default_markers(tokenizer) -> ChatMarkers:
    """openPangu's markers when the vocabulary has both, else the defaults of the tokenizer's kind."""
    if all(_piece_id(tokenizer, piece) is not None for piece in (OPENPANGU_MARKERS.turn_start,
                                                                 OPENPANGU_MARKERS.turn_end)):
        return OPENPANGU_MARKERS
    kind = getattr(tokenizer, "kind", "")
    if kind not in DEFAULT_MARKERS:
        raise ConfigError(f"no default chat markers for the {kind or 'unknown'} tokenizer; "
                          f"pass --turn_start and --turn_end")
    return DEFAULT_MARKERS[kind]


def markers_for(tokenizer, turn_start: str | None = None, turn_end: str | None = None) -> ChatMarkers:
    """The tokenizer's default markers with the given ones in their place."""
    defaults = default_markers(tokenizer) if turn_start is None or turn_end is None else None
    return ChatMarkers(defaults.turn_start if turn_start is None else turn_start,
                       defaults.turn_end if turn_end is None else turn_end)


class MarkerEncoder:
    """`markers` bound to `tokenizer`: which markers are single ids, and text -> ids with them split out.

    Raises `ConfigError` when the turn end is not one vocabulary piece (generation could not stop on it).
    """

    def __init__(self, tokenizer, markers: ChatMarkers):
        self.tokenizer, self.markers = tokenizer, markers
        self.special = {piece: token_id for piece in (markers.turn_start, markers.turn_end)
                        if (token_id := _piece_id(tokenizer, piece)) is not None}
        if markers.turn_end not in self.special:
            raise ConfigError(f"the turn end {markers.turn_end!r} is not one piece of the "
                              f"{getattr(tokenizer, 'kind', '')} vocabulary; generation stops on the turn end's "
                              f"id, so choose a piece it has (--turn_end, e.g. "
                              f"{DEFAULT_MARKERS.get(getattr(tokenizer, 'kind', ''), OPENPANGU_MARKERS).turn_end!r})")

    @property
    def turn_end_id(self) -> int:
        return self.special[self.markers.turn_end]

    def split(self, text: str) -> list[str | int]:
        """`text` as plain-text parts (str) and marker ids (int), in order."""
        return [self.special[part] if part in self.special else part
                for part in split_on_pieces(text, self.special)]

    def encode(self, text: str) -> list[int]:
        return encode_with_pieces(self.tokenizer, text, self.special)
