"""openPangu-Embedded's tokenizer: SentencePiece (`tokenizer.model`) plus the special pieces that
`tokenizer_config.json` lists (formats.md §6.3).

The released tokenizer (tokenization_openpangu.py, a transformers slow tokenizer) splits a text on its added tokens
(`added_tokens_decoder`: `<s>`, `[unused0]`..`[unused33]`, `<|User|>:`, ...) and encodes the text between them with
SentencePiece, chunk by chunk; each special written in a text becomes its single id, the id `added_tokens_decoder`
gives it (which may lie past the SentencePiece vocabulary). `encode` does the same and adds no BOS; `bos_id` is the
id a prompt starts with when `add_bos_token` is true, as `tokenizer(text)` adds it. `decode` joins SentencePiece's
text of each run of ordinary ids with the specials' own text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pangu_zoo.errors import DataError, InputError
from pangu_zoo.tokenizers.base import Tokenizer
from pangu_zoo.tokenizers.special import split_on_pieces

MODEL_FILE_NAME = "tokenizer.model"
CONFIG_FILE_NAME = "tokenizer_config.json"


def _content(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _flag(value) -> bool:
    """tokenizer_config.json booleans, which the released tokenizer also accepts as "true"/"false"."""
    return value.lower() == "true" if isinstance(value, str) else bool(value)


class OpenPanguTokenizer(Tokenizer):
    """openPangu-Embedded's SentencePiece tokenizer with its added special tokens.

    Args:
        path: the model folder (or any folder) holding `tokenizer.model` and `tokenizer_config.json`.
    """

    kind = "openpangu"

    def __init__(self, path: str | Path):
        import sentencepiece

        self.directory = Path(path)
        model_file, config_file = self.directory / MODEL_FILE_NAME, self.directory / CONFIG_FILE_NAME
        for needed in (model_file, config_file):
            if not needed.is_file():
                raise DataError(f"openPangu tokenizer file {needed} not found; pass the model folder, which holds "
                                f"{MODEL_FILE_NAME} and {CONFIG_FILE_NAME}")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as error:
            raise DataError(f"{model_file} is not a SentencePiece model ({error})") from error
        try:
            settings = json.loads(config_file.read_text(encoding="utf-8"))
            decoder = settings.get("added_tokens_decoder") or {}
            self._specials = {entry["content"]: int(token_id) for token_id, entry in decoder.items()}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{config_file} is not a tokenizer config with an added_tokens_decoder: {error}") from error
        self._special_text = {token_id: piece for piece, token_id in self._specials.items()}
        self._add_bos = _flag(settings.get("add_bos_token", True))
        self._named = {role: _content(settings.get(f"{role}_token")) for role in ("bos", "eos", "pad", "unk")}
        for piece in self._named.values():
            if piece is not None:
                self.token_to_id(piece)  # each named special must be in the vocabulary

    def __getstate__(self) -> dict:
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def __repr__(self) -> str:
        return f"OpenPanguTokenizer({str(self.directory)!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return max(self._sp.get_piece_size(), max(self._special_text, default=-1) + 1)

    def token_to_id(self, piece: str) -> int:
        if piece in self._specials:
            return self._specials[piece]
        token_id = self._sp.piece_to_id(piece)
        if token_id == self._sp.unk_id() and piece != self._sp.id_to_piece(token_id):
            raise InputError(f"piece {piece!r} is not in the vocabulary of {self.directory}")
        return token_id

    def _role_id(self, role: str) -> int:
        piece = self._named[role]
        if piece is None:
            raise InputError(f"{self.directory / CONFIG_FILE_NAME} names no {role}_token")
        return self.token_to_id(piece)

    @property
    def bos_token(self) -> str | None:
        """The BOS piece a prompt text starts with (`<s>`), or None when add_bos_token is false."""
        return self._named["bos"] if self._add_bos else None

    @property
    def bos_id(self) -> int | None:
        """The id prompts start with (`<s>`), or None when tokenizer_config.json sets add_bos_token false."""
        return self._role_id("bos") if self._add_bos and self._named["bos"] is not None else None

    @property
    def eot_id(self) -> int:
        return self._role_id("eos")  # `[unused10]`: it ends every chat turn

    @property
    def pad_id(self) -> int:
        return self._role_id("pad")

    @property
    def document_separator_id(self) -> int:
        return self.eot_id

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the added special tokens, never printed as text."""
        return frozenset(self._special_text)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in split_on_pieces(text, self._specials):
            ids.extend([self._specials[part]] if part in self._specials else self._sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text, run = [], []
        for token_id in self.check_ids(ids):
            if token_id in self._special_text:
                text.append(self._sp.decode(run))
                text.append(self._special_text[token_id])
                run = []
            elif token_id >= self._sp.get_piece_size():
                raise InputError(f"token id {token_id} is neither a SentencePiece piece nor an added token of "
                                 f"{self.directory}")
            else:
                run.append(token_id)
        return "".join(text) + self._sp.decode(run)
