"""The fast PanGu-alpha segmentation (jieba-rs routes + NumPy HMM) against plain jieba 0.42.1 + SentencePiece.

The reference is `PanguTokenizer(segmenter="jieba")`: jieba's own `cut` and the released vocab.model. Every
shared corpus is compared: samples of each in the default run, every byte of each in the slow one.
"""

from __future__ import annotations

import json
import random
import sys

import data_fixtures
import pytest
from data_fixtures import shared_file

from pangu_zoo.data import preprocess
from pangu_zoo.data.corpus import read_utf8
from pangu_zoo.tokenizers.pangu_tokenizer import PanguTokenizer
from pangu_zoo.tokenizers.pool import EncodePool

pytest.importorskip("rjieba", reason="rjieba is not installed: the fast segmentation is off, jieba does it all")

pangu_tokenizer = data_fixtures.pangu_tokenizer
CORPORA = ["zh_corpus/xiyouji.txt", "zh_corpus/cmrc2018_contexts_zh.txt", "c3/c3-d-dev.json", "c3/c3-d-train.json",
           "c3/c3-m-dev.json", "c3/c3-m-train.json", "tinyshakespeare/input.txt", "wikitext2/wiki.valid.tokens"]
SAMPLE_CHARS = 100_000  # a few hundred KB of UTF-8 per Chinese corpus


@pytest.fixture(scope="module")
def reference():
    return PanguTokenizer(shared_file("pangu_tokenizer", "vocab.model"), segmenter="jieba")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [text for item in items for text in _strings(item)]


def _corpus_text(relative: str) -> str:
    """The text users would preprocess: the file, or every string of a C3 json (dialogues, questions,
    choices, answers) one per line."""
    path = shared_file(*relative.split("/"))
    if path.suffix == ".json":
        return "\n".join(_strings(json.loads(path.read_text(encoding="utf-8"))))
    return read_utf8(path)


def _sample(text: str, windows: int = 20) -> str:
    """About SAMPLE_CHARS characters: `windows` runs of whole lines spread evenly over the text."""
    if len(text) <= SAMPLE_CHARS:
        return text
    size = SAMPLE_CHARS // windows
    pieces = []
    for index in range(windows):
        start = text.find("\n", index * (len(text) - size) // windows) + 1
        pieces.append(text[start:text.rfind("\n", start, start + size) + 1])
    return "".join(pieces)


def _first_different(ours: list, theirs: list) -> str:
    index = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    near = slice(max(index - 3, 0), index + 4)
    return f"at {index} of {len(ours)}/{len(theirs)}: {ours[near]} vs {theirs[near]}"


def _assert_same(fast: PanguTokenizer, reference: PanguTokenizer, text: str) -> None:
    ours, theirs = fast.words(text), reference.words(text)
    same = ours == theirs  # not in the assert: pytest would diff megabytes of text to explain it
    assert same, "segments differ " + _first_different(ours.split(" "), theirs.split(" "))
    ours, theirs = fast.encode(text), reference.encode(text)
    same = ours == theirs
    assert same, "ids differ " + _first_different(ours, theirs)


@pytest.mark.parametrize("corpus", CORPORA)
def test_fast_ids_equal_jieba_on_a_sample_of_each_corpus(pangu_tokenizer, reference, corpus):
    assert pangu_tokenizer.segmenter == "fast"
    _assert_same(pangu_tokenizer, reference, _sample(_corpus_text(corpus)))


@pytest.mark.slow
@pytest.mark.parametrize("corpus", CORPORA)
def test_fast_ids_equal_jieba_on_each_whole_corpus(pangu_tokenizer, reference, corpus):
    _assert_same(pangu_tokenizer, reference, _corpus_text(corpus))


def _every_character(first: int, last: int) -> str:
    """Each code point (surrogates left out) next to a Chinese character, 50 to a line."""
    chars = (chr(c) for c in range(first, last + 1) if not 0xD800 <= c <= 0xDFFF)
    return "".join(f"{c}中{chr(10) if i % 50 == 49 else ''}" for i, c in enumerate(chars))


def test_every_bmp_character_is_cut_as_jieba_cuts_it(pangu_tokenizer, reference):
    # the CJK extension and compatibility blocks are Chinese to jieba-rs and not to jieba
    _assert_same(pangu_tokenizer, reference, _every_character(0, 0xFFFF))


@pytest.mark.slow
def test_every_character_is_cut_as_jieba_cuts_it(pangu_tokenizer, reference):
    _assert_same(pangu_tokenizer, reference, _every_character(0x10000, 0x10FFFF))


# characters and words that exercise each rule of jieba's precise mode
_ALPHABET = (list("的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对"
                  "常睡洞诗曰混沌未分天地乱茫茫渺渺无人见")
             + list("abcXYZ0123456789+#&._%-") + list("，。！？、；：“”（）《》—…") + ["\u3400", "\u4db5", "\u9fd6",
             "\u9fff", "\uf900", "\U00020000", "\U0002a6d6", "\u2582", "\u2583", "\u3000", "\xa0"]
             + list(" \t\n\r\x0b\x0c\x1c\x85") + ["\r\n", "B超", "T恤", "C++", "3.5%", "2.4km", "U.S.", "e-mail",
                                                    "中国", "北京大学", "常在", "不因", "卡拉OK", "Q币"])


def test_random_strings_are_cut_as_jieba_cuts_them(pangu_tokenizer, reference):
    rng = random.Random(0)
    texts = ["".join(rng.choices(_ALPHABET, k=rng.randint(0, 40))) for _ in range(3000)]
    for text in texts:  # one by one: jieba's own HMM cuts these few characters
        assert pangu_tokenizer.words(text) == reference.words(text), repr(text)
    # all at once: HmmCutter cuts the runs of every text together
    assert pangu_tokenizer.encode_many(texts) == [reference.encode(text) for text in texts]


def test_encode_many_equals_encode(pangu_tokenizer, reference):
    texts = _sample(_corpus_text("c3/c3-m-dev.json")).split("\n")[:500] + ["", " \n ", "西游记"]
    assert pangu_tokenizer.encode_many(texts) == [reference.encode(text) for text in texts]


def test_hmm_cutter_is_jiebas_viterbi():
    from jieba import finalseg

    from pangu_zoo.tokenizers.jieba_fast import HmmCutter

    rng = random.Random(1)
    # common characters, rare ones missing from some emission tables (ties at MIN_FLOAT), lengths 2..60
    chars = [chr(c) for c in range(0x4E00, 0x9FD6)]
    words = {"".join(rng.choices(chars[:3000] if i % 2 else chars, k=rng.randint(2, 60))) for i in range(2000)}
    words |= {"常在他洞下", "小明硕士毕业于中国科学院计算所", "龘龘", "鿕鿕鿕"}
    cuts = HmmCutter().cut(words)
    assert cuts.keys() == words
    wrong = [(word, cut) for word, cut in cuts.items() if cut != " ".join(finalseg.cut(word))]
    assert not wrong, f"{len(wrong)} of {len(words)} differ from jieba, e.g. {wrong[0]}"


def test_dictionary_and_total_are_jiebas():
    import jieba

    from pangu_zoo.tokenizers.jieba_fast import _read_dictionary

    frequencies, total = _read_dictionary()
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    assert total == tokenizer.total  # jieba counts the repeated entry "B超" twice
    expected = {word: count for word, count in tokenizer.FREQ.items() if count}
    assert len(frequencies) == len(expected) == 349045
    assert not [word for word, count in expected.items() if frequencies.get(word) != count]
    # jieba_fast reads a token of several ASCII letters/digits in the no-HMM output as single characters that
    # jieba merged; a dictionary word spelt so would be ambiguous, and there is none
    assert not [word for word in frequencies if len(word) > 1 and word.isascii() and word.isalnum()]


@pytest.mark.parametrize("segmenter", ["fast", "jieba"])
def test_known_good_ids_with_either_segmenter(segmenter):
    tokenizer = PanguTokenizer(shared_file("pangu_tokenizer"), segmenter=segmenter)
    assert tokenizer.encode("中国的首都是北京") == [96, 11, 6539, 16, 263]
    assert tokenizer.encode("今天是一个好日子。\n我们 去 公园") == [465, 16, 46, 22557, 72, 12, 13, 3, 57, 13, 4,
                                                               84, 13, 4, 3942]


def test_lone_surrogates_and_a_missing_rjieba_fall_back_to_jieba(pangu_tokenizer, reference, monkeypatch):
    from pangu_zoo.tokenizers import jieba_fast

    text = "西游记\ud800第一回"
    assert pangu_tokenizer.words(text) == reference.words(text)
    monkeypatch.setitem(sys.modules, "rjieba", None)  # import rjieba now raises ImportError
    jieba_fast.fast_jieba.cache_clear()
    try:
        assert jieba_fast.fast_jieba("\u2582", "\u2583") is None
        assert PanguTokenizer(shared_file("pangu_tokenizer")).encode("中国的首都是北京") == [96, 11, 6539, 16, 263]
    finally:
        jieba_fast.fast_jieba.cache_clear()


def test_a_long_text_is_segmented_by_workers_and_encoded_in_one_piece(pangu_tokenizer, reference):
    text = shared_file("tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:60_000]
    whole = reference.encode(text)
    lines = text.split("\n")
    line_by_line = [i for index, line in enumerate(lines)
                    for i in reference.encode(line) + (reference.encode("\n") if index < len(lines) - 1 else [])]
    # SentencePiece sums scores in float32 from the start of its input: cutting the text changes some ids
    assert line_by_line != whole
    parts = pangu_tokenizer.split_for_workers(text, 5_000)
    assert len(parts) > 5 and "".join(parts) == text and all(part.endswith("\n") for part in parts[:-1])
    with EncodePool(pangu_tokenizer, num_workers=2) as pool:
        encoded = list(pool.imap(["短句。", text, "", text[:3_000]], part_chars=5_000))
    assert len(encoded) == 4
    same = encoded[1] == whole
    assert same, _first_different(encoded[1], whole)
    assert [encoded[0], encoded[2], encoded[3]] == [reference.encode("短句。"), [], reference.encode(text[:3_000])]


def test_segmenter_is_kept_when_pickled(pangu_tokenizer, reference):
    import pickle

    assert pickle.loads(pickle.dumps(reference)).segmenter == "jieba"
    assert pickle.loads(pickle.dumps(pangu_tokenizer)).segmenter == "fast"
    with pytest.raises(Exception, match="segmenter 'hmm' is not one of fast, jieba"):
        PanguTokenizer(shared_file("pangu_tokenizer"), segmenter="hmm")


def test_preprocess_writes_the_same_dataset_with_either_segmenter(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    # one document (no blank line) longer than a worker's part, and a second file of paragraphs
    (source / "a.txt").write_text(read_utf8(shared_file("zh_corpus", "cmrc2018_contexts_zh.txt"))[:90_000],
                                  encoding="utf-8")
    (source / "b.txt").write_text(read_utf8(shared_file("zh_corpus", "xiyouji.txt"))[:20_000], encoding="utf-8")
    outputs = {}
    for segmenter, workers in (("jieba", "1"), ("fast", "1"), ("fast", "2")):
        output = tmp_path / f"{segmenter}{workers}" / "zh"
        assert preprocess.main(["--input_glob", str(source / "*.txt"), "--tokenizer", "jieba", "--model_file",
                                str(shared_file("pangu_tokenizer")), "--segmenter", segmenter, "--format",
                                "megatron", "--num_workers", workers, "--output_file", str(output),
                                "--no_progress"]) == 0
        outputs[segmenter, workers] = [(output.parent / f"zh.{suffix}").read_bytes() for suffix in ("bin", "idx")]
    capsys.readouterr()
    assert outputs["fast", "1"] == outputs["jieba", "1"] == outputs["fast", "2"]
