"""Tokenizers: PanGu-alpha (jieba + SentencePiece) and GPT-2 (byte-level BPE), behind one small interface.

`load_tokenizer(kind, path)` builds either from a directory or a vocabulary file. The implementations import
their backends lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from pangu_zoo.errors import ConfigError
from pangu_zoo.tokenizers.base import Tokenizer

# accepted names -> canonical kind; "jieba" and "gpt" are the reference preprocess's `--tokenizer` values.
KIND_ALIASES = {"pangu-alpha": "pangu-alpha", "pangu": "pangu-alpha", "jieba": "pangu-alpha",
                "gpt2": "gpt2", "gpt": "gpt2"}

__all__ = ["KIND_ALIASES", "Tokenizer", "canonical_kind", "load_tokenizer", "tokenizer_kind_for", "PanguTokenizer",
           "GPT2Tokenizer"]


def canonical_kind(kind: str) -> str:
    """'pangu-alpha' or 'gpt2' for any accepted alias; `ConfigError` otherwise."""
    try:
        return KIND_ALIASES[kind.lower()]
    except KeyError:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(KIND_ALIASES)}") from None


def tokenizer_kind_for(config) -> str:
    """The tokenizer kind of a model's family (`config` is its `ModelConfig`): GPT-2's BPE or PanGu-alpha's."""
    return "gpt2" if config.family == "gpt2" else "pangu-alpha"


def load_tokenizer(kind: str, path: str | Path) -> Tokenizer:
    """Tokenizer of `kind` ('pangu-alpha'/'jieba' or 'gpt2'/'gpt') from a directory or vocabulary file."""
    if canonical_kind(kind) == "pangu-alpha":
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
