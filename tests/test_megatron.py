"""Megatron .bin/.idx: files written here are read back by an independent reader that follows the layout."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import shared_file

from pangu_zoo.data import preprocess
from pangu_zoo.data.megatron import MegatronDataset, MegatronWriter, token_dtype
from pangu_zoo.errors import DataError

# formats.md §3.1 dtype codes, written out again here rather than imported
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}


def read_mmidIDX(prefix: Path) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Independent reader: (dtype, sizes, pointers, doc_idx, sequences)."""
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", raw[9:17])
    assert version == 1
    dtype = np.dtype(DTYPES[raw[17]])
    count, doc_count = struct.unpack("<QQ", raw[18:34])
    sizes = np.frombuffer(raw, "<i4", count, 34)
    pointers = np.frombuffer(raw, "<i8", count, 34 + 4 * count)
    doc_idx = np.frombuffer(raw, "<i8", doc_count, 34 + 12 * count)
    assert len(raw) == 34 + 12 * count + 8 * doc_count
    data = Path(f"{prefix}.bin").read_bytes()
    sequences = [np.frombuffer(data, dtype, int(size), int(pointer))
                 for size, pointer in zip(sizes, pointers, strict=True)]
    assert len(data) == int(sizes.sum()) * dtype.itemsize
    return dtype, sizes, pointers, doc_idx, sequences


@pytest.mark.parametrize(("vocab_size", "dtype", "code"), [(40000, np.uint16, 8), (50257, np.uint16, 8),
                                                          (65500, np.int32, 4), (150000, np.int32, 4)])
def test_writer_layout(tmp_path, vocab_size, dtype, code):
    assert token_dtype(vocab_size) == np.dtype(dtype)
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, vocab_size, size=n) for n in (5, 1, 17, 3)]
    writer = MegatronWriter(tmp_path / "corpus", token_dtype(vocab_size))
    for document in documents:
        writer.add_document(document)
    writer.finish()
    assert (tmp_path / "corpus.idx").read_bytes()[17] == code
    read_dtype, sizes, pointers, doc_idx, sequences = read_mmidIDX(tmp_path / "corpus")
    assert read_dtype == np.dtype(dtype)
    assert sizes.tolist() == [5, 1, 17, 3]
    assert pointers.tolist() == [0, 5 * read_dtype.itemsize, 6 * read_dtype.itemsize, 23 * read_dtype.itemsize]
    assert doc_idx.tolist() == [0, 1, 2, 3, 4]
    for expected, sequence in zip(documents, sequences, strict=True):
        np.testing.assert_array_equal(sequence, expected)
    reader = MegatronDataset(tmp_path / "corpus")
    assert (len(reader), reader.num_documents, reader.num_tokens) == (4, 4, 26)
    np.testing.assert_array_equal(reader[2], documents[2])


def test_preprocess_megatron_matches_tokenizer(tmp_path):
    vocab = shared_file("gpt2_bpe")
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "a.txt").write_text("First paragraph.\nstill first.\n\nSecond one.\n", encoding="utf-8")
    (corpus / "b.txt").write_text("\n\nThird, from another file.", encoding="utf-8")
    out = tmp_path / "out" / "corpus"
    code = preprocess.main(["--input_glob", str(corpus / "*.txt"), "--tokenizer", "gpt", "--vocab_dir", str(vocab),
                            "--format", "megatron", "--output_file", str(out), "--no_progress"])
    assert code == 0
    from pangu_zoo.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("gpt2", vocab)
    texts = ["First paragraph.\nstill first.", "Second one.", "Third, from another file."]
    dtype, sizes, _, doc_idx, sequences = read_mmidIDX(out)
    assert dtype == np.uint16
    assert doc_idx.tolist() == [0, 1, 2, 3]
    assert [s.tolist() for s in sequences] == [tokenizer.encode(t) + [50256] for t in texts]


def test_reader_rejects_foreign_files(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"NOTMAGIC!" + bytes(40))
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not a Megatron MMIDIDX"):
        MegatronDataset(tmp_path / "x")
    with pytest.raises(DataError, match="not found"):
        MegatronDataset(tmp_path / "missing")
