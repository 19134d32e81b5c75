"""The PanGu-alpha tokenizer: jieba word segmentation, then SentencePiece (`vocab.model`, 40000 pieces).

Encode: jieba precise-mode segments, ' ' -> U+2582 and '\\n' -> U+2583 inside each segment, segments joined
with one ASCII space (a word boundary for SentencePiece), then SentencePiece ids. Decode reverses it:
SentencePiece text, ASCII spaces removed, U+2582 -> ' ', U+2583 -> '\\n'.

The SentencePiece model normalises with nmt_nfkc, so decode(encode(text)) is `text` after that normalisation
(full-width punctuation becomes ASCII, whitespace other than ' ' and '\\n' disappears, characters outside the
vocabulary come back as '⁇').

Segmentation: `segmenter="fast"` (the default) takes jieba's exact segments from `jieba_fast` (jieba-rs for the
word route, jieba's HMM in NumPy) when rjieba is installed; `segmenter="jieba"` calls jieba itself, the
reference the fast path is tested against on every shared corpus.

SentencePiece adds piece scores up in float32 from the start of its input, so the ids of a long text are not
always the ids of its lines put end to end: a text is encoded in one SentencePiece call, and worker processes
may only segment a long text line by line (`split_for_workers`; jieba never joins two lines).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from pangu_zoo.errors import ConfigError, DataError, InputError
from pangu_zoo.tokenizers.base import Tokenizer

MODEL_FILE_NAME = "vocab.model"
SPACE_PIECE = "\u2582"
NEWLINE_PIECE = "\u2583"
_TO_PIECES = str.maketrans(" \n", SPACE_PIECE + NEWLINE_PIECE)
_FROM_PIECES = str.maketrans(SPACE_PIECE + NEWLINE_PIECE, " \n")
SEGMENTERS = ("fast", "jieba")


@functools.cache
def _jieba():
    """jieba's default tokenizer, dictionary loaded once per process, without its chatty log lines."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.dt.initialize()
    return jieba.dt


def find_model_file(path: str | Path) -> Path:
    """`path` itself if it is a file, else `path/vocab.model`; `DataError` when it does not exist."""
    path = Path(path)
    model_file = path / MODEL_FILE_NAME if path.is_dir() else path
    if not model_file.is_file():
        raise DataError(f"PanGu-alpha tokenizer file {model_file} not found; pass the released vocab.model "
                        f"or its directory (get it with `pangu fetch-tokenizer pangu-alpha --out DIR`)")
    return model_file


class PanguTokenizer(Tokenizer):
    """PanGu-alpha jieba + SentencePiece tokenizer.

    Args:
        model_file: `vocab.model` or a directory holding it.
        segmenter: "fast" (jieba's segments from `jieba_fast`, plain jieba when rjieba is not installed) or
            "jieba" (plain jieba, the reference).
    """

    kind = "pangu-alpha"

    def __init__(self, model_file: str | Path, segmenter: str = "fast"):
        import sentencepiece

        if segmenter not in SEGMENTERS:
            raise ConfigError(f"segmenter {segmenter!r} is not one of {', '.join(SEGMENTERS)}")
        self.segmenter = segmenter
        self.model_file = find_model_file(model_file)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as error:
            raise DataError(f"{self.model_file} is not a SentencePiece model ({error}); "
                            f"pass the released PanGu-alpha vocab.model") from error

    def __getstate__(self) -> dict:
        return {"model_file": self.model_file, "segmenter": self.segmenter}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_file"], state["segmenter"])

    def __repr__(self) -> str:
        return (f"PanguTokenizer({str(self.model_file)!r}, segmenter={self.segmenter!r}, "
                f"vocab_size={self.vocab_size})")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, piece: str) -> int:
        token_id = self._sp.piece_to_id(piece)
        if token_id == self._sp.unk_id() and piece != self._sp.id_to_piece(token_id):
            raise InputError(f"piece {piece!r} is not in the vocabulary of {self.model_file}")
        return token_id

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(self.check_ids([token_id])[0])

    @property
    def pad_id(self) -> int:
        return self.token_to_id("<pad>")

    @property
    def eod_id(self) -> int:
        return self.token_to_id("<eod>")

    @property
    def eot_id(self) -> int:
        return self.token_to_id("<eot>")

    @property
    def unk_id(self) -> int:
        return self.token_to_id("<unk>")

    @property
    def document_separator_id(self) -> int:
        # The reference README preprocesses jieba data with `--eot 6`, the `<pad>` piece, and trains with
        # eod_id 6 and a loss mask on input 6; keep that pairing as the default.
        return self.pad_id

    def segment(self, text: str) -> list[str]:
        """jieba precise-mode segments of `text` (the reference's `tokenize`)."""
        return list(_jieba().cut(text, cut_all=False))

    def words(self, text: str) -> str:
        """What SentencePiece encodes: the jieba segments of `text`, ' ' and '\\n' replaced, joined by ' '."""
        fast = self._fast_jieba()
        if fast is not None:
            try:
                return fast.joined(text)
            except ValueError:  # lone surrogates, which jieba-rs cannot take and jieba can
                pass
        return " ".join(segment.translate(_TO_PIECES) for segment in _jieba().cut(text, cut_all=False))

    def _fast_jieba(self):
        if self.segmenter != "fast":
            return None
        from pangu_zoo.tokenizers.jieba_fast import fast_jieba

        return fast_jieba(SPACE_PIECE, NEWLINE_PIECE)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(self.words(text))

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        fast = self._fast_jieba()
        if fast is not None:
            try:
                return [self._sp.encode(words) for words in fast.joined_many(texts)]
            except ValueError:  # a text with lone surrogates: each text on its own
                pass
        return [self.encode(text) for text in texts]

    def split_for_workers(self, text: str, part_chars: int) -> list[str]:
        """`text` cut after a '\\n' about every `part_chars` characters: jieba never joins two lines, so the
        parts' `words` joined by ' ' are the text's."""
        parts, start = [], 0
        while len(text) - start > part_chars:
            end = text.find("\n", start + part_chars) + 1
            if end == 0 or end == len(text):
                break
            parts.append(text[start:end])
            start = end
        return parts + [text[start:]]

    def prepare(self, part: str) -> str:
        return self.words(part)

    def combine(self, prepared: Sequence[str]) -> list[int]:
        return self._sp.encode(" ".join(prepared))

    def decode(self, ids: Sequence[int]) -> str:
        text = self._sp.decode(self.check_ids(ids))
        return text.replace(" ", "").translate(_FROM_PIECES)

    def warm_up(self) -> None:
        if self._fast_jieba() is None:
            _jieba()
