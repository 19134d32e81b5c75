"""The GPT-2 byte-level BPE tokenizer on the Hugging Face `tokenizers` library.

Reads either the OpenAI file names (`encoder.json` + `vocab.bpe`) or the Hugging Face ones (`vocab.json` +
`merges.txt`); both pairs hold the same content. Ids equal `transformers.GPT2TokenizerFast` built from
the same files: no prefix space, no BOS/EOS added, `<|endoftext|>` in the text is the special token 50256.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pangu_zoo.errors import DataError, InputError
from pangu_zoo.tokenizers.base import Tokenizer

END_OF_TEXT = "<|endoftext|>"
# (vocabulary, merges) file names, in the order they are looked for.
FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def find_vocab_files(path: str | Path) -> tuple[Path, Path]:
    """(vocabulary json, merges) in directory `path`, or next to the file `path`; `DataError` when missing."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    for vocab_name, merges_name in FILE_PAIRS:
        if path.is_file() and path.name not in (vocab_name, merges_name):
            continue
        vocab_file, merges_file = directory / vocab_name, directory / merges_name
        if vocab_file.is_file() and merges_file.is_file():
            return vocab_file, merges_file
    expected = " or ".join(f"{v} + {m}" for v, m in FILE_PAIRS)
    raise DataError(f"GPT-2 vocabulary files not found at {path} (expected {expected}); "
                    f"get them with `pangu fetch-tokenizer gpt2 --out DIR`")


class GPT2Tokenizer(Tokenizer):
    """GPT-2 byte-level BPE (50257 ids; `<|endoftext|>` = 50256).

    Args:
        vocab_file: `encoder.json` / `vocab.json`.
        merges_file: `vocab.bpe` / `merges.txt`.
    """

    kind = "gpt2"

    def __init__(self, vocab_file: str | Path, merges_file: str | Path):
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as BackendTokenizer

        self.vocab_file, self.merges_file = Path(vocab_file), Path(merges_file)
        for file in (self.vocab_file, self.merges_file):
            if not file.is_file():
                raise DataError(f"GPT-2 vocabulary file {file} not found; "
                                f"get it with `pangu fetch-tokenizer gpt2 --out DIR`")
        try:
            bpe = models.BPE.from_file(str(self.vocab_file), str(self.merges_file))
        except Exception as error:  # the Rust side raises a plain Exception on malformed files
            raise DataError(f"cannot read GPT-2 BPE files {self.vocab_file}, {self.merges_file}: "
                            f"{error}") from error
        backend = BackendTokenizer(bpe)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
        self._backend = backend

    @classmethod
    def from_path(cls, path: str | Path) -> GPT2Tokenizer:
        """Build from a directory holding the two files, or from one of the files."""
        return cls(*find_vocab_files(path))

    def __getstate__(self) -> dict:
        return {"vocab_file": self.vocab_file, "merges_file": self.merges_file}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["vocab_file"], state["merges_file"])

    def __repr__(self) -> str:
        return f"GPT2Tokenizer({str(self.vocab_file)!r}, {str(self.merges_file)!r})"

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, piece: str) -> int:
        token_id = self._backend.token_to_id(piece)
        if token_id is None:
            raise InputError(f"piece {piece!r} is not in the GPT-2 vocabulary {self.vocab_file}")
        return token_id

    @property
    def eot_id(self) -> int:
        return self.token_to_id(END_OF_TEXT)

    # GPT-2 has no pad or document piece: `<|endoftext|>` serves for all three (as in HF and mindformers).
    pad_id = eot_id
    document_separator_id = eot_id

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(self.check_ids(ids), skip_special_tokens=False)
