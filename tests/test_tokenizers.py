"""Tokenizers: known-good ids, special ids by piece, round trips on real corpora, parity with transformers."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import data_fixtures
import pytest
from data_fixtures import shared_file

from pangu_zoo.errors import ConfigError, DataError, InputError
from pangu_zoo.tokenizers import load_tokenizer

pangu_tokenizer = data_fixtures.pangu_tokenizer
gpt2_tokenizer = data_fixtures.gpt2_tokenizer

PANGU_KNOWN = [
    ("中国的首都是北京", [96, 11, 6539, 16, 263]),
    ("今天是一个好日子。\n我们 去 公园", [465, 16, 46, 22557, 72, 12, 13, 3, 57, 13, 4, 84, 13, 4, 3942]),
]
GPT2_KNOWN = [("Hello world", [15496, 995]), ("Hello, my dog is cute", [15496, 11, 616, 3290, 318, 13779]),
              ("<|endoftext|>", [50256])]


@pytest.mark.parametrize(("text", "ids"), PANGU_KNOWN)
def test_pangu_known_ids_and_exact_decode(pangu_tokenizer, text, ids):
    assert pangu_tokenizer.encode(text) == ids
    assert pangu_tokenizer.decode(ids) == text


@pytest.mark.parametrize(("piece", "expected"), [("<unk>", 0), ("<s>", 1), ("</s>", 2), ("\u2583", 3),
                                                  ("\u2582", 4), ("<sep>", 5), ("<pad>", 6), ("<mask>", 7),
                                                  ("<eod>", 8), ("<eot>", 9)])
def test_pangu_special_ids_by_piece(pangu_tokenizer, piece, expected):
    assert pangu_tokenizer.token_to_id(piece) == expected


def test_pangu_properties(pangu_tokenizer):
    assert (pangu_tokenizer.vocab_size, pangu_tokenizer.pad_id, pangu_tokenizer.eod_id,
            pangu_tokenizer.eot_id) == (40000, 6, 8, 9)
    with pytest.raises(InputError, match="not in the vocabulary"):
        pangu_tokenizer.token_to_id("<no such piece>")
    with pytest.raises(InputError, match="outside the vocabulary"):
        pangu_tokenizer.decode([5, 40000])


@pytest.mark.parametrize(("text", "ids"), GPT2_KNOWN)
def test_gpt2_known_ids(gpt2_tokenizer, text, ids):
    assert gpt2_tokenizer.encode(text) == ids
    assert gpt2_tokenizer.decode(ids) == text


def test_gpt2_properties(gpt2_tokenizer):
    assert (gpt2_tokenizer.vocab_size, gpt2_tokenizer.eot_id, gpt2_tokenizer.pad_id) == (50257, 50256, 50256)
    with pytest.raises(InputError):
        gpt2_tokenizer.decode([50257])


# ---- PanGu-alpha round trips: decode(encode(x)) is x after the vocabulary's nmt_nfkc normalisation ----

def _known_characters() -> set[str]:
    known = set()
    for line in shared_file("pangu_tokenizer", "vocab.vocab").read_text(encoding="utf-8").splitlines():
        piece = line.split("\t")[0]
        if not (piece.startswith("<") and piece.endswith(">")):
            known.update(piece)
    return known - {"\u2581"}


def _expected_decode_pattern(line: str, known: set[str]) -> str:
    """Regex of decode(encode(line)) built from the vocabulary file and unicodedata, not from SentencePiece:
    NFKC per character (the model keeps U+FF5E '～'), ' ' and '\\n' survive, other whitespace vanishes
    (it is not mapped to U+2582), control and format characters (zero-width space) vanish, and each run
    of characters outside the vocabulary becomes one or more '⁇'."""
    parts, in_unknown_run = [], False
    for char in line:
        if char in " \n":
            parts.append(re.escape(char))
            in_unknown_run = False
            continue
        normal = char if char == "\uff5e" else unicodedata.normalize("NFKC", char)
        if char.isspace() or normal.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
            continue
        for c in normal:
            if c in known:
                parts.append(re.escape(c))
                in_unknown_run = False
            elif not in_unknown_run:
                parts.append("\u2047+")
                in_unknown_run = True
    return "".join(parts)


def _check_round_trips(tokenizer, lines):
    known = _known_characters()
    exact = 0
    for number, line in lines:
        ids = tokenizer.encode(line)
        decoded = tokenizer.decode(ids)
        assert re.fullmatch(_expected_decode_pattern(line, known), decoded), (number, line, decoded)
        if "\u2047" not in decoded:  # normalised text round-trips exactly
            assert tokenizer.decode(tokenizer.encode(decoded)) == decoded, (number, line)
        exact += decoded == line
    return exact


def _corpus_lines(name, every=1):
    text = shared_file("zh_corpus", name).read_text(encoding="utf-8")
    lines = [(n, line) for n, line in enumerate(text.splitlines()) if line.strip()]
    return lines[::every]


def test_pangu_round_trip_cmrc_every_line(pangu_tokenizer):
    lines = _corpus_lines("cmrc2018_contexts_zh.txt")
    assert len(lines) > 1000
    _check_round_trips(pangu_tokenizer, lines)


def test_pangu_round_trip_xiyouji_sample(pangu_tokenizer):
    _check_round_trips(pangu_tokenizer, _corpus_lines("xiyouji.txt", every=25))


@pytest.mark.slow
def test_pangu_round_trip_xiyouji_full(pangu_tokenizer):
    _check_round_trips(pangu_tokenizer, _corpus_lines("xiyouji.txt"))


def test_pangu_round_trip_is_exact_on_plain_text(pangu_tokenizer):
    text = "孙悟空 大闹天宫\n唐僧西天取经, 一路降妖除魔。"
    assert pangu_tokenizer.decode(pangu_tokenizer.encode(text)) == text


# ---- batch encoding, pickling, loading ----

def test_batch_encode_with_workers_equals_loop(pangu_tokenizer, gpt2_tokenizer):
    zh = [line for _, line in _corpus_lines("xiyouji.txt", every=50)][:120]
    en = shared_file("tinyshakespeare", "input.txt").read_text(encoding="utf-8").splitlines()[:200]
    for tokenizer, lines in ((pangu_tokenizer, zh), (gpt2_tokenizer, en)):
        loop = [tokenizer.encode(line) for line in lines]
        assert tokenizer.encode_batch(lines, num_workers=1) == loop
        assert tokenizer.encode_batch(lines, num_workers=2, chunk_size=16) == loop


def test_tokenizers_pickle_by_file(pangu_tokenizer, gpt2_tokenizer):
    for tokenizer in (pangu_tokenizer, gpt2_tokenizer):
        copy = pickle.loads(pickle.dumps(tokenizer))
        assert copy.encode("西游记 Journey to the West") == tokenizer.encode("西游记 Journey to the West")


def test_load_tokenizer_accepts_directory_file_and_hf_names(tmp_path):
    assert load_tokenizer("jieba", shared_file("pangu_tokenizer")).vocab_size == 40000
    assert load_tokenizer("pangu-alpha", shared_file("pangu_tokenizer", "vocab.model")).vocab_size == 40000
    assert load_tokenizer("gpt", shared_file("gpt2_bpe", "vocab.bpe")).encode("Hello world") == [15496, 995]
    shutil.copy(shared_file("gpt2_bpe", "encoder.json"), tmp_path / "vocab.json")
    shutil.copy(shared_file("gpt2_bpe", "vocab.bpe"), tmp_path / "merges.txt")
    assert load_tokenizer("gpt2", tmp_path).encode("Hello world") == [15496, 995]


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="vocab.model"):
        load_tokenizer("pangu-alpha", tmp_path)
    with pytest.raises(DataError, match="encoder.json"):
        load_tokenizer("gpt2", tmp_path)
    (tmp_path / "vocab.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer("pangu-alpha", tmp_path)
    with pytest.raises(ConfigError, match="unknown tokenizer kind"):
        load_tokenizer("bert", tmp_path)


def test_jieba_is_quiet():
    code = ("from pangu_zoo.tokenizers import load_tokenizer; import sys; "
            f"t = load_tokenizer('jieba', {str(shared_file('pangu_tokenizer'))!r}); "
            "assert t.encode('中国的首都是北京') == [96, 11, 6539, 16, 263]")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "prefix dict" not in result.stderr


# ---- GPT-2 parity with transformers.GPT2TokenizerFast built from the same files ----

@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed; "
                                       "install the test extra to compare with GPT2TokenizerFast")
    directory = tmp_path_factory.mktemp("hf_gpt2")
    shutil.copy(shared_file("gpt2_bpe", "encoder.json"), directory / "vocab.json")
    shutil.copy(shared_file("gpt2_bpe", "vocab.bpe"), directory / "merges.txt")
    return transformers.GPT2TokenizerFast.from_pretrained(str(directory))


def _lines(*parts, limit=None):
    lines = [line for line in shared_file(*parts).read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(itertools.islice(lines, limit))


@pytest.mark.parametrize(("parts", "limit"), [(("tinyshakespeare", "input.txt"), 400),
                                               (("wikitext2", "wiki.valid.tokens"), 400)])
def test_gpt2_ids_equal_transformers(gpt2_tokenizer, hf_gpt2, parts, limit):
    lines = _lines(*parts, limit=limit)
    assert gpt2_tokenizer.encode_batch(lines) == [hf_gpt2.encode(line) for line in lines]
    joined = "\n".join(lines[:100]) + "<|endoftext|>"
    assert gpt2_tokenizer.encode(joined) == hf_gpt2.encode(joined)
    assert gpt2_tokenizer.decode(hf_gpt2.encode(joined)) == hf_gpt2.decode(hf_gpt2.encode(joined))


@pytest.mark.slow
@pytest.mark.parametrize("parts", [("tinyshakespeare", "input.txt"), ("wikitext2", "wiki.valid.tokens"),
                                   ("zh_corpus", "xiyouji.txt")])
def test_gpt2_ids_equal_transformers_full_files(gpt2_tokenizer, hf_gpt2, parts):
    lines = _lines(*parts)
    assert gpt2_tokenizer.encode_batch(lines) == [hf_gpt2.encode(line) for line in lines]
