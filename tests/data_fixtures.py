"""Shared helpers of the data and tokenizer tests: the real files under ../shared/data, skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data {path} is absent (the shared data folder is not next to the repository)")
    return path


@pytest.fixture(scope="session")
def pangu_tokenizer():
    from pangu_zoo.tokenizers.pangu_tokenizer import PanguTokenizer

    return PanguTokenizer(shared_file("pangu_tokenizer", "vocab.model"))


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from pangu_zoo.tokenizers.gpt2_tokenizer import GPT2Tokenizer

    return GPT2Tokenizer.from_path(shared_file("gpt2_bpe"))


def files_in(directory: Path) -> list[str]:
    """Every name in `directory`, hidden ones included (to prove nothing was left behind)."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def preprocess_cmrc(out: Path, seq_length: int) -> Path:
    """The CMRC paragraphs preprocessed with the released PanGu-alpha tokenizer into `out/cmrc` samples of
    `seq_length` ids; returns `out`."""
    from pangu_zoo.cli import main

    assert main(["preprocess", "--input_glob", str(shared_file("zh_corpus", "cmrc2018_contexts_zh.txt")),
                 "--tokenizer", "jieba", "--model_file", str(shared_file("pangu_tokenizer", "vocab.model")),
                 "--output_file", str(out / "cmrc"), "--seq_length", str(seq_length), "--no_progress"]) == 0
    return out
