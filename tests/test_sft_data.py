"""SFT data: the chat template and the handler's labels (formats.md §6.3, §6.4), the three input formats,
packing, and the written files, each against a re-derivation written here from the fact sheet."""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import files_in, shared_file
from test_megatron import read_mmidIDX

from pangu_zoo.cli import main
from pangu_zoo.data.sft.chat_template import encode_chat, render_chat
from pangu_zoo.data.sft.conversations import Conversation, Turn, parse_record, read_conversations
from pangu_zoo.data.sft.labels import SampleEncoder
from pangu_zoo.data.sft.markers import ChatMarkers, MarkerEncoder, markers_for
from pangu_zoo.data.sft.packing import greedy_knapsack, packed_rows, plan_packing
from pangu_zoo.errors import ConfigError, DataError, InputError
from pangu_zoo.tokenizers.base import Tokenizer

ROLE = {"system": "系统", "user": "用户", "assistant": "助手", "tool": "工具"}


class CharTokenizer(Tokenizer):
    """One id per character, plus openPangu's special pieces and a BOS, as `add_bos_token` tokenizers have."""

    kind = "chars"
    SPECIAL = {"<unk>": 0, "<s>": 1, "[unused9]": 2, "[unused10]": 3, "<eod>": 4}
    bos_id = 1

    def encode(self, text):
        return [100 + ord(character) for character in text]

    def decode(self, ids):
        pieces = {v: k for k, v in self.SPECIAL.items()}
        return "".join(pieces[i] if i in pieces else chr(i - 100) for i in ids)

    @property
    def vocab_size(self):
        return 100 + 0x10000

    def token_to_id(self, piece):
        if piece not in self.SPECIAL:
            raise InputError(f"{piece!r} is not a piece")
        return self.SPECIAL[piece]

    eot_id = property(lambda self: 3)
    pad_id = property(lambda self: 0)
    document_separator_id = property(lambda self: 4)


@pytest.fixture(params=["chars", "pangu-alpha", "gpt2"])
def tokenizer(request):
    if request.param == "chars":
        return CharTokenizer()
    from pangu_zoo.tokenizers import load_tokenizer

    folder = {"pangu-alpha": "pangu_tokenizer", "gpt2": "gpt2_bpe"}[request.param]
    return load_tokenizer(request.param, shared_file(folder))


# --- the re-derivation from formats.md §6.4, in plain loops ---------------------------------------------------

def reference_encode(tokenizer, text, specials):
    """Encode `text`, every special piece as its single id, the text between them with tokenizer.encode."""
    ids, plain, i = [], "", 0
    while i < len(text):
        piece = next((p for p in specials if p and text.startswith(p, i)), None)
        if piece is None:
            plain += text[i]
            i += 1
            continue
        if plain:
            ids += tokenizer.encode(plain)
            plain = ""
        ids.append(tokenizer.token_to_id(piece))
        i += len(piece)
    return ids + (tokenizer.encode(plain) if plain else [])


def reference_sample(tokenizer, start, end, meta_prompts, turns, append_eod=False):
    """§6.4: the system part (with the BOS) -100; user/tool turns -100; the assistant prefix -100; the
    assistant's content + end token trained. The pieces that are one vocabulary id are split out."""
    specials = []
    for piece in (start, end):
        try:
            tokenizer.token_to_id(piece)
            specials.append(piece)
        except InputError:
            pass
    ids, labels = [], []
    if getattr(tokenizer, "bos_id", None) is not None:
        ids.append(tokenizer.bos_id)
    system = "".join(f"{start}系统：{meta}{end}" for meta in (meta_prompts or [""]))
    ids += reference_encode(tokenizer, system, specials)
    labels += [-100] * len(ids)
    for number in range(0, len(turns), 2):
        (role, question), (_, answer) = turns[number], turns[number + 1]
        prompt = reference_encode(tokenizer, f"{start}{ROLE[role]}：{question}{end}", specials)
        prefix = reference_encode(tokenizer, f"{start}助手：", specials)
        content = reference_encode(tokenizer, f"{answer}{end}", specials)
        ids += prompt + prefix + content
        labels += [-100] * (len(prompt) + len(prefix)) + content
    if append_eod:
        ids.append(tokenizer.document_separator_id)
        labels.append(-100)
    return ids, labels


def reference_knapsacks(lengths, capacity):
    """The demo's greedy_knapsack: ascending sort, then the largest length that still fits, by bisect."""
    numbers = sorted(lengths)
    knapsacks = []
    while numbers:
        knapsack, remaining = [], capacity
        while True:
            index = bisect.bisect(numbers, remaining)
            if index == 0:
                break
            remaining -= numbers[index - 1]
            knapsack.append(numbers.pop(index - 1))
        knapsacks.append(knapsack)
    return knapsacks


def reference_pack(samples, seq_length, pad_id):
    """Rows (ids, attention_mask, labels) as the demo packs them, with the mask as sample numbers."""
    length_to_indexes = defaultdict(list)
    kept = []
    for index, (ids, _) in enumerate(samples):
        if len(ids) <= seq_length:
            length_to_indexes[len(ids)].append(index)
            kept.append(len(ids))
    rows = []
    for knapsack in reference_knapsacks(kept, seq_length):
        ids, mask, labels = [], [], []
        for number, length in enumerate(knapsack, start=1):
            sample_ids, sample_labels = samples[length_to_indexes[length].pop()]
            ids += sample_ids
            labels += sample_labels
            mask += [number] * len(sample_ids)
        padding = seq_length - len(ids)
        rows.append((ids + [pad_id] * padding, mask + [0] * padding, labels + [-100] * padding))
    return rows


CONVERSATIONS = [  # (meta prompts, turns)
    (["你是一个乐于助人的助手。", "回答要简短。"],
     [("user", "你好"), ("assistant", "你好！有什么可以帮你？"), ("user", "北京在哪里？"), ("assistant", "中国。")]),
    ("只用英文回答", [("user", "What is 2+2?"), ("assistant", "4"), ("tool", "calculator: 4"),
                  ("assistant", "It is 4.")]),
    ([], [("user", "没有系统提示\n第二行"), ("assistant", "好的")]),
    (["s"], [("tool", "{\"temp\": 21}"), ("assistant", "21 度。")]),
]


def demo_record(meta, turns):
    return {"meta_prompt": meta, "data": [{"role": role, "content": content} for role, content in turns]}


# --- the template ------------------------------------------------------------------------------------------

def test_render_chat_is_the_openpangu_template():
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"}, {"role": "tool", "content": "42"},
                {"role": "assistant", "content": "答案是42"}]
    assert render_chat(messages) == ("[unused9]系统：你是助手[unused10][unused9]用户：你好[unused10]"
                                     "[unused9]助手：你好！[unused10][unused9]工具：42[unused10]"
                                     "[unused9]助手：答案是42[unused10]")
    # no system message: an empty system turn first; the generation prompt last
    assert render_chat(messages[1:2], add_generation_prompt=True) == \
        "[unused9]系统：[unused10][unused9]用户：你好[unused10][unused9]助手："
    assert render_chat([{"role": "function", "content": "f()"}]) == \
        "[unused9]系统：[unused10][unused9]方法：f()[unused10]"
    assert render_chat(messages[:2], markers=ChatMarkers("<sep>", "<eot>")) == \
        "<sep>系统：你是助手<eot><sep>用户：你好<eot>"
    with pytest.raises(InputError, match="unknown chat role 'robot'"):
        render_chat([{"role": "robot", "content": "x"}])


def test_default_markers_per_tokenizer(tokenizer):
    markers = markers_for(tokenizer)
    encoder = MarkerEncoder(tokenizer, markers)
    expected = {"chars": ("[unused9]", "[unused10]", 3), "pangu-alpha": ("<sep>", "<eot>", 9),
                "gpt2": ("\n", "<|endoftext|>", 50256)}[tokenizer.kind]
    assert (markers.turn_start, markers.turn_end, encoder.turn_end_id) == expected
    assert markers_for(tokenizer, turn_end=markers.turn_end, turn_start="##").turn_start == "##"
    with pytest.raises(ConfigError, match="turn end 'not one piece'"):
        MarkerEncoder(tokenizer, ChatMarkers("<sep>", "not one piece"))


# --- labels --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("append_eod", [False, True])
def test_labels_equal_the_handler_rederivation(tokenizer, append_eod):
    markers = markers_for(tokenizer)
    encoder = SampleEncoder(tokenizer, markers, append_eod=append_eod)
    for meta, turns in CONVERSATIONS:
        ids, labels = encoder.encode(parse_record(demo_record(meta, turns)))
        expected_ids, expected_labels = reference_sample(tokenizer, markers.turn_start, markers.turn_end,
                                                         [meta] if isinstance(meta, str) else meta, turns,
                                                         append_eod)
        assert ids.tolist() == expected_ids
        assert labels.tolist() == expected_labels
        assert ids.dtype == labels.dtype == np.int32


def test_char_tokenizer_sample_by_hand():
    """The openPangu markers and BOS written out id by id for one short conversation."""
    ids, labels = SampleEncoder(CharTokenizer(), markers_for(CharTokenizer())).encode(
        parse_record(demo_record("S", [("user", "Q"), ("assistant", "A")])))
    c = [100 + ord(x) for x in "S系统用户助手：QA"]
    S, sys1, sys2, user1, user2, asst1, asst2, colon, Q, A = c
    assert ids.tolist() == [1, 2, sys1, sys2, colon, S, 3, 2, user1, user2, colon, Q, 3, 2, asst1, asst2, colon, A, 3]
    assert labels.tolist() == [-100] * 17 + [A, 3]


def test_generation_prompt_ids_equal_the_training_ids(tokenizer):
    markers = markers_for(tokenizer)
    conversation = parse_record(demo_record(*CONVERSATIONS[1]))
    ids, _ = SampleEncoder(tokenizer, markers).encode(conversation)
    messages = conversation.messages()
    assert encode_chat(messages, tokenizer, markers, add_generation_prompt=False) == ids.tolist()
    prompt = encode_chat(messages[:-1], tokenizer, markers)
    assert ids.tolist()[:len(prompt)] == prompt  # the prompt ends with the assistant prefix
    decoded = tokenizer.decode(prompt)
    assert decoded.endswith("助手:" if tokenizer.kind == "pangu-alpha" else "助手：")


# --- input formats -------------------------------------------------------------------------------------------

def test_alpaca_and_sharegpt_become_the_same_conversation():
    alpaca = {"system": "sys", "history": [["h1", "a1"]], "instruction": "翻译", "input": "hello", "output": "你好"}
    expected = Conversation(("sys",), (Turn("user", "h1"), Turn("assistant", "a1"), Turn("user", "翻译\nhello"),
                                       Turn("assistant", "你好")))
    assert parse_record(alpaca) == expected
    assert parse_record({"instruction": "q", "input": "", "output": "a"}) == \
        Conversation((), (Turn("user", "q"), Turn("assistant", "a")))
    sharegpt = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "h1"},
                                  {"from": "gpt", "value": "a1"}, {"from": "user", "value": "翻译\nhello"},
                                  {"from": "assistant", "value": "你好"}]}
    assert parse_record(sharegpt) == expected
    tools = {"system": "s", "conversations": [{"from": "observation", "value": "o"}, {"from": "gpt", "value": "a"},
                                               {"from": "tool", "value": "t"}, {"from": "gpt", "value": "b"}]}
    assert parse_record(tools, "sharegpt") == Conversation(("s",), (Turn("tool", "o"), Turn("assistant", "a"),
                                                                    Turn("tool", "t"), Turn("assistant", "b")))
    pangu = demo_record(["sys"], [("user", "h1"), ("assistant", "a1"), ("user", "翻译\nhello"),
                                  ("assistant", "你好")])
    assert parse_record(pangu) == parse_record(pangu, "pangu") == expected


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('{"text": "x"}', "cannot tell the format"),
    ('{"data": [{"role": "user", "content": "q"}]}', "ends with an assistant turn"),
    ('{"data": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}', "turn 1 is 'user'"),
    ('{"data": [{"role": "assistant", "content": "a"}]}', "turn 0 is 'assistant'"),
    ('{"data": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}', "content must be a string"),
    ('{"conversations": [{"from": "bot", "value": "a"}]}', "from is 'bot'"),
    ('{"instruction": "q", "output": null}', "output must be a string"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(demo_record("s", [("user", "q"), ("assistant", "a")]), ensure_ascii=False)
                    + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad.jsonl:3: .*{message}"):
        list(read_conversations(path))


def test_forced_format_refuses_other_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    assert len(list(read_conversations(path, "alpaca"))) == 1
    with pytest.raises(DataError, match=r"a.jsonl:1: conversations must be a list"):
        list(read_conversations(path, "sharegpt"))


# --- packing -------------------------------------------------------------------------------------------------

def test_greedy_knapsack_equals_the_demo():
    rng = np.random.default_rng(0)
    for capacity in (8, 64, 100):
        for _ in range(30):
            lengths = rng.integers(1, capacity + 1, size=rng.integers(1, 60)).tolist()
            assert greedy_knapsack(lengths, capacity) == reference_knapsacks(lengths, capacity)


def test_packing_equals_the_demo_with_sample_numbers():
    rng = np.random.default_rng(1)
    lengths = [5, 9, 5, 3, 20, 17, 2, 9, 9, 1, 16, 30, 16]  # duplicates; 16 fills a row; 20, 17 and 30 do not fit
    samples = []
    for length in lengths:
        ids = rng.integers(10, 1000, size=length).tolist()
        labels = [i if rng.random() < 0.5 else -100 for i in ids]
        samples.append((ids, labels))
    plan = plan_packing(lengths, 16)
    assert plan.dropped == [4, 5, 11]
    rows = list(packed_rows([(np.array(i), np.array(la)) for i, la in samples], plan, 16, pad_id=7))
    expected = reference_pack(samples, 16, pad_id=7)
    assert len(rows) == len(expected) == 5
    for row, (ids, mask, labels) in zip(rows, expected, strict=True):
        assert row.input_ids.tolist() == ids and row.attention_mask.tolist() == mask
        assert row.labels.tolist() == labels
    # by hand: [16], [16], [9, 5, 2], [9, 5, 1], [9, 3]
    assert [row.attention_mask.max() for row in rows] == [1, 1, 3, 3, 2]


# --- the command and its files -------------------------------------------------------------------------------

def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def all_records():
    """Hand-written conversations in all three formats, with a long one that 48 tokens cannot hold."""
    records = [demo_record(meta, turns) for meta, turns in CONVERSATIONS]
    records.append({"instruction": "把下面的话翻译成英文", "input": "今天天气很好", "output": "Nice weather today."})
    records.append({"conversations": [{"from": "human", "value": "一加一"}, {"from": "gpt", "value": "二"}]})
    records.append(demo_record("长", [("user", "很长的问题" * 20), ("assistant", "短")]))
    return records


def expected_rows(tokenizer, records, seq_length):
    markers = markers_for(tokenizer)
    samples = []
    for record in records:
        conversation = parse_record(record)
        turns = [(t.role, t.content) for t in conversation.turns]
        samples.append(reference_sample(tokenizer, markers.turn_start, markers.turn_end, list(conversation.system),
                                        turns))
    return samples, reference_pack(samples, seq_length, tokenizer.pad_id)


def test_files_read_back_with_an_independent_reader(tmp_path):
    import mindspore.dataset as ds

    from pangu_zoo.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("pangu-alpha", shared_file("pangu_tokenizer"))
    records = all_records()
    source = write_jsonl(tmp_path / "in.jsonl", records)
    assert main(["sft-preprocess", "--input", str(source), "--tokenizer_path", str(shared_file("pangu_tokenizer")),
                 "--seq_length", "48", "--output_prefix", str(tmp_path / "out" / "sft"), "--num_workers", "2",
                 "--no_progress"]) == 0
    samples, rows = expected_rows(tokenizer, records, 48)
    for column, index in (("input_ids", 0), ("attention_mask", 1), ("labels", 2)):
        dtype, sizes, pointers, doc_idx, sequences = read_mmidIDX(tmp_path / "out" / f"sft_packed_{column}_document")
        assert dtype == np.int32 and sizes.tolist() == [48] * len(rows)
        assert doc_idx.tolist() == list(range(len(rows) + 1))
        assert [s.tolist() for s in sequences] == [row[index] for row in rows]
    mindrecord = ds.MindDataset(str(tmp_path / "out" / "sft_packed.mindrecord"),
                                columns_list=["input_ids", "attention_mask", "labels"], shuffle=False)
    read = [[a.tolist() for a in row] for row in mindrecord.create_tuple_iterator(output_numpy=True)]
    assert read == [list(row) for row in rows]
    metadata = json.loads((tmp_path / "out" / "sft_packed.json").read_text(encoding="utf-8"))
    kept = [s for s in samples if len(s[0]) <= 48]
    real = sum(len(ids) for ids, _ in kept)
    assert {k: metadata[k] for k in ("tokenizer", "pad_id", "eod_id", "seq_length", "turn_end_id")} == \
        {"tokenizer": "pangu-alpha", "pad_id": 6, "eod_id": 6, "seq_length": 48, "turn_end_id": 9}
    summary = metadata["summary"]
    assert (summary["samples_read"], summary["samples_kept"], summary["dropped_too_long"], summary["rows"]) == \
        (len(records), len(kept), len(records) - len(kept), len(rows))
    assert summary["dropped_too_long"] >= 1
    assert summary["real_tokens"] == real
    assert summary["packing_efficiency"] == pytest.approx(real / (len(rows) * 48))
    assert summary["tokens_trained"] == sum(sum(1 for label in labels if label != -100) for _, labels in kept)


def test_preprocess_handler_and_merge(tmp_path):
    records = all_records()
    first = write_jsonl(tmp_path / "a.jsonl", records[:4])
    second = write_jsonl(tmp_path / "b.jsonl", records[4:])
    common = ["--tokenizer_path", str(shared_file("gpt2_bpe")), "--seq_length", "96", "--no_progress"]
    assert main(["preprocess", "--handler", "pangu_instruction", "--input", str(first), "--output_prefix",
                 str(tmp_path / "a"), "--output_format", "megatron", *common]) == 0
    assert main(["sft-preprocess", "--input", str(second), "--output_prefix", str(tmp_path / "b"), *common]) == 0
    assert main(["sft-preprocess", "--merge", str(tmp_path / "a"), str(tmp_path / "b_packed.json"),
                 "--output_prefix", str(tmp_path / "merged" / "all")]) == 0
    read = {name: read_mmidIDX(tmp_path / name)[4] for name in ("a_packed_labels_document", "b_packed_labels_document",
                                                               "merged/all_packed_labels_document")}
    assert [s.tolist() for s in read["merged/all_packed_labels_document"]] == \
        [s.tolist() for s in read["a_packed_labels_document"] + read["b_packed_labels_document"]]
    summary = json.loads((tmp_path / "merged" / "all_packed.json").read_text())["summary"]
    assert summary["samples_read"] == len(records)
    assert summary["rows"] == len(read["merged/all_packed_labels_document"])


def test_bad_input_is_one_line_and_leaves_no_files(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", all_records()[:2])
    with source.open("a", encoding="utf-8") as stream:
        stream.write('{"data": [{"role": "user", "content": "q"}]}\n')
    out = tmp_path / "out"
    code = main(["sft-preprocess", "--input", str(source), "--tokenizer_path", str(shared_file("pangu_tokenizer")),
                 "--seq_length", "64", "--output_prefix", str(out / "sft"), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "in.jsonl:3:" in err, err
    assert files_in(out) == []
    # too short a row for every sample, an unknown merge source, a turn end GPT-2 does not have
    source = write_jsonl(tmp_path / "good.jsonl", all_records()[:2])
    for argv, message in [
        (["--input", str(source), "--seq_length", "8"], "longer than --seq_length 8"),
        (["--merge", str(tmp_path / "nothing")], "no packed SFT data"),
        (["--input", str(source), "--turn_end", "[unused10]", "--tokenizer_path", str(shared_file("gpt2_bpe"))],
         "turn end '[unused10]'"),
    ]:
        base = ["sft-preprocess", "--tokenizer_path", str(shared_file("pangu_tokenizer")), "--output_prefix",
                str(out / "sft"), "--no_progress"]
        assert main(base + argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert files_in(out) == []


def test_make_c3_sft_script(tmp_path):
    import subprocess
    import sys

    c3 = shared_file("c3")
    out = tmp_path / "c3.jsonl"
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_c3_sft.py"
    result = subprocess.run([sys.executable, str(script), "--data_dir", str(c3), "--out", str(out), "--limit", "5"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    source = json.loads((c3 / "c3-d-train.json").read_text(encoding="utf-8"))
    assert len(records) == 10
    first = source[0][1][0]
    user, assistant = records[0]["data"]
    assert records[0]["meta_prompt"] and (user["role"], assistant["role"]) == ("user", "assistant")
    assert first["question"] in user["content"] and all(choice in user["content"] for choice in first["choice"])
    assert source[0][0][0] in user["content"] and assistant["content"] == first["answer"]
    assert isinstance(parse_record(records[0]), Conversation)


def test_chat_template_imports_no_mindspore():
    import subprocess
    import sys

    code = ("import sys, pangu_zoo.data.sft.chat_template; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mindspore', 'numpy')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
