"""The PanGu-alpha tokenizer: jieba word segmentation, then SentencePiece (`vocab.model`, 40000 pieces).

Encode: jieba precise-mode segments, ' ' -> U+2582 and '\\n' -> U+2583 inside each segment, segments joined
with one ASCII space (a word boundary for SentencePiece), then SentencePiece ids. Decode reverses it:
SentencePiece text, ASCII spaces removed, U+2582 -> ' ', U+2583 -> '\\n'.

The SentencePiece model normalises with nmt_nfkc, so decode(encode(text)) is `text` after that normalisation
(full-width punctuation becomes ASCII, whitespace other than ' ' and '\\n' disappears, characters outside the
vocabulary come back as '⁇').
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from pangu_zoo.errors import DataError, InputError
from pangu_zoo.tokenizers.base import Tokenizer

MODEL_FILE_NAME = "vocab.model"
SPACE_PIECE = "\u2582"
NEWLINE_PIECE = "\u2583"
_TO_PIECES = str.maketrans(" \n", SPACE_PIECE + NEWLINE_PIECE)
_FROM_PIECES = str.maketrans(SPACE_PIECE + NEWLINE_PIECE, " \n")


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
    """

    kind = "pangu-alpha"

    def __init__(self, model_file: str | Path):
        import sentencepiece

        self.model_file = find_model_file(model_file)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as error:
            raise DataError(f"{self.model_file} is not a SentencePiece model ({error}); "
                            f"pass the released PanGu-alpha vocab.model") from error

    def __getstate__(self) -> dict:
        return {"model_file": self.model_file}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_file"])

    def __repr__(self) -> str:
        return f"PanguTokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"

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

    def encode(self, text: str) -> list[int]:
        words = " ".join(segment.translate(_TO_PIECES) for segment in _jieba().cut(text, cut_all=False))
        return self._sp.encode(words)

    def decode(self, ids: Sequence[int]) -> str:
        text = self._sp.decode(self.check_ids(ids))
        return text.replace(" ", "").translate(_FROM_PIECES)

    def warm_up(self) -> None:
        _jieba()
