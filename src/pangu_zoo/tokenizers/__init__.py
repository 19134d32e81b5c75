"""Tokenizers: PanGu-alpha (jieba + SentencePiece), GPT-2 (byte-level BPE) and openPangu-Embedded (SentencePiece with
added special tokens), behind one small interface.

`load_tokenizer(kind, path)` builds either from a directory or a vocabulary file. The implementations import
their backends lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from pangu_zoo.errors import ConfigError
from pangu_zoo.tokenizers.base import Tokenizer

# accepted names -> canonical kind; "jieba" and "gpt" are the reference preprocess's `--tokenizer` values.
KIND_ALIASES = {"pangu-alpha": "pangu-alpha", "pangu": "pangu-alpha", "jieba": "pangu-alpha",
                "gpt2": "gpt2", "gpt": "gpt2", "openpangu": "openpangu", "openpangu-embedded": "openpangu"}
# model family -> its tokenizer kind
FAMILY_KINDS = {"gpt2": "gpt2", "pangu_alpha": "pangu-alpha", "openpangu": "openpangu"}

__all__ = ["KIND_ALIASES", "Tokenizer", "canonical_kind", "load_tokenizer", "tokenizer_kind_for", "PanguTokenizer",
           "GPT2Tokenizer", "OpenPanguTokenizer"]


def canonical_kind(kind: str) -> str:
    """'pangu-alpha', 'gpt2' or 'openpangu' for any accepted alias; `ConfigError` otherwise."""
    try:
        return KIND_ALIASES[kind.lower()]
    except KeyError:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(KIND_ALIASES)}") from None


def tokenizer_kind_for(config) -> str:
    """The tokenizer kind of a model's family (`config` is its `ModelConfig`)."""
    return FAMILY_KINDS[config.family]


def load_tokenizer(kind: str, path: str | Path) -> Tokenizer:
    """Tokenizer of `kind` ('pangu-alpha'/'jieba', 'gpt2'/'gpt' or 'openpangu') from a directory or vocabulary file
    (openPangu: the model folder, with tokenizer.model and tokenizer_config.json)."""
    kind = canonical_kind(kind)
    if kind == "openpangu":
        from pangu_zoo.tokenizers.openpangu_tokenizer import OpenPanguTokenizer

        return OpenPanguTokenizer(path)
    if kind == "pangu-alpha":
        from pangu_zoo.tokenizers.pangu_tokenizer import PanguTokenizer

        return PanguTokenizer(path)
    from pangu_zoo.tokenizers.gpt2_tokenizer import GPT2Tokenizer

    return GPT2Tokenizer.from_path(path)


def __getattr__(name: str):
    if name == "PanguTokenizer":
        from pangu_zoo.tokenizers.pangu_tokenizer import PanguTokenizer

        return PanguTokenizer
    if name == "GPT2Tokenizer":
        from pangu_zoo.tokenizers.gpt2_tokenizer import GPT2Tokenizer

        return GPT2Tokenizer
    if name == "OpenPanguTokenizer":
        from pangu_zoo.tokenizers.openpangu_tokenizer import OpenPanguTokenizer

        return OpenPanguTokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
