"""Packed SFT training: the four columns against loops, a packed row's loss against its samples one by one,
both file formats through the dataset, and short fine-tunes of tiny models on the C3-derived set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from conftest import randomize_weights
from data_fixtures import shared_file
from test_megatron import read_mmidIDX
from test_sft_data import all_records, write_jsonl

from pangu_zoo.cli import main
from pangu_zoo.data.sft.dataset import SftBatchTransform, create_sft_dataset
from pangu_zoo.data.sft.packing import packed_rows, plan_packing
from pangu_zoo.errors import ConfigError, DataError
from pangu_zoo.models.loss import LanguageModelWithLoss
from pangu_zoo.runtime import use_graph_mode

REPO = Path(__file__).resolve().parents[1]


def random_samples(rng, lengths, vocab=1000):
    """(ids, labels) with a prompt of label -100 and a trained answer, as the template makes them."""
    samples = []
    for length in lengths:
        ids = rng.integers(10, vocab, size=length).astype(np.int32)
        answer = rng.integers(1, max(length // 2, 1) + 1)  # 1 .. length/2 trained tokens
        labels = np.where(np.arange(length) >= length - answer, ids, -100).astype(np.int32)
        samples.append((ids, labels))
    return samples


def reference_columns(ids, samples, labels, pad_id):
    """The four training columns of one packed row, written as loops."""
    seq = len(ids)
    positions, mask, loss = [0] * seq, np.zeros((seq, seq), np.int8), [0.0] * seq
    for q in range(seq):
        if samples[q] > 0:
            first = q
            while first > 0 and samples[first - 1] == samples[q]:
                first -= 1
            positions[q] = q - first
        for k in range(seq):
            if k == q or (samples[q] > 0 and samples[k] == samples[q] and k <= q):
                mask[q, k] = 1
        if q + 1 < seq and samples[q] > 0 and samples[q + 1] == samples[q] and labels[q + 1] != -100:
            loss[q] = 1.0
    return list(ids) + [pad_id], positions, mask, loss


def test_columns_equal_the_loops():
    rng = np.random.default_rng(0)
    samples = random_samples(rng, [7, 11, 5, 9, 3, 12])
    plan = plan_packing([len(ids) for ids, _ in samples], 16)
    rows = list(packed_rows(samples, plan, 16, pad_id=6))
    batch = [np.stack([getattr(row, name) for row in rows]) for name in ("input_ids", "attention_mask", "labels")]
    input_ids, position_ids, attention_mask, loss_mask = SftBatchTransform(pad_id=6)(*batch)
    assert input_ids.shape == (len(rows), 17) and attention_mask.dtype == np.int8
    for index, row in enumerate(rows):
        ids, positions, mask, loss = reference_columns(row.input_ids.tolist(), row.attention_mask.tolist(),
                                                       row.labels.tolist(), 6)
        assert input_ids[index].tolist() == ids and position_ids[index].tolist() == positions
        np.testing.assert_array_equal(attention_mask[index], mask)
        assert loss_mask[index].tolist() == loss
    assert loss_mask.sum() == sum(np.count_nonzero(labels != -100) for _, labels in samples)


def test_a_trained_label_must_equal_its_id():
    ids = np.arange(10, 18, dtype=np.int32)[None]
    labels = np.full_like(ids, -100)
    labels[0, 5] = 99
    with pytest.raises(DataError, match="label 99 at position 5 where its token is 15"):
        SftBatchTransform(pad_id=0)(ids, np.ones_like(ids), labels)


def _loss(network, input_ids, position_ids, attention_mask, loss_mask):
    return float(network(*(ms.Tensor(np.asarray(a)) for a in (input_ids, position_ids, attention_mask,
                                                                loss_mask))).asnumpy())


@pytest.mark.parametrize("family", ["tiny_pangu", "tiny_gpt2"])
def test_packed_row_loss_equals_its_samples_one_by_one(family, request):
    use_graph_mode()
    model = randomize_weights(request.getfixturevalue(family), seed=3, scale=0.05, vector_scale=0.1)
    network = LanguageModelWithLoss(model)
    rng = np.random.default_rng(1)
    seq = 64
    samples = random_samples(rng, [20, 17, 15, 9])  # 61 tokens: one row
    plan = plan_packing([len(ids) for ids, _ in samples], seq)
    (row,) = packed_rows(samples, plan, seq, pad_id=0)
    packed = SftBatchTransform(pad_id=0)(row.input_ids[None], row.attention_mask[None], row.labels[None])
    packed_loss = _loss(network, *packed)

    # each sample alone at the start of a row of the same shape: positions from 0, a causal mask, its labels
    total, count = 0.0, 0
    for ids, labels in samples:
        alone = np.zeros(seq + 1, np.int32)
        alone[:len(ids)] = ids
        loss_mask = np.zeros(seq, np.float32)
        loss_mask[:len(ids) - 1] = labels[1:] != -100
        loss = _loss(network, alone[None], np.arange(seq, dtype=np.int32)[None],
                     np.tril(np.ones((seq, seq), np.int8))[None], loss_mask[None])
        total += loss * loss_mask.sum()
        count += loss_mask.sum()
    assert packed_loss == pytest.approx(total / count, abs=1e-5)
    # the same row with one causal mask over it (samples see each other) gives another loss
    causal = _loss(network, packed[0], np.arange(seq, dtype=np.int32)[None],
                   np.tril(np.ones((seq, seq), np.int8))[None], packed[3])
    assert abs(causal - packed_loss) > 1e-3


@pytest.fixture(scope="module")
def packed_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    source = write_jsonl(out / "in.jsonl", all_records())
    assert main(["sft-preprocess", "--input", str(source), "--tokenizer_path", str(shared_file("pangu_tokenizer")),
                 "--seq_length", "48", "--output_prefix", str(out / "sft"), "--no_progress"]) == 0
    return out / "sft"


def test_dataset_reads_both_formats_as_the_files_hold(packed_data):
    columns = [np.stack(read_mmidIDX(Path(f"{packed_data}_packed_{name}_document"))[4])
               for name in ("input_ids", "attention_mask", "labels")]
    expected = SftBatchTransform(pad_id=6)(*columns)
    for data_format in ("megatron", "mindrecord"):
        dataset = create_sft_dataset(len(columns[0]), packed_data, shuffle=False, seq_length=48,
                                     data_format=data_format)
        (batch,) = list(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
        for got, want in zip(batch, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    # two ranks read disjoint rows of the same seeded order
    rows = len(columns[0])
    seen = []
    for rank in (0, 1):
        dataset = create_sft_dataset(1, packed_data, device_num=2, rank=rank, seed=5)
        seen.append([tuple(b[0][0].tolist()) for b in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)])
    assert len(seen[0]) == len(seen[1]) == rows // 2 and not set(seen[0]) & set(seen[1])
    with pytest.raises(ConfigError, match="rows in .* are 48 tokens"):
        create_sft_dataset(1, packed_data, seq_length=64)


def test_train_refuses_another_seq_length_in_one_line(packed_data, tmp_path, capsys):
    code = main(["train", "--stage", "sft", "--mode", "pangu_alpha_tiny", "--vocab_size", "40000", "--seq_length",
                 "64", "--data_url", str(packed_data), "--per_batch_size", "1", "--save_checkpoint_path",
                 str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--seq_length 48" in err, err


# --- fine-tuning on the C3-derived set ---------------------------------------------------------------------------

FINE_TUNES = {  # tokenizer folder, kind, preset
    "pangu-alpha": ("pangu_tokenizer", "pangu_alpha_tiny"),
    "gpt2": ("gpt2_bpe", "gpt2-tiny"),
}


@pytest.mark.parametrize("kind", FINE_TUNES)
def test_fine_tune_on_c3_and_answer_in_the_template(kind, tmp_path, capsys):
    from pangu_zoo.data.sft.chat_template import encode_chat, render_chat
    from pangu_zoo.data.sft.markers import MarkerEncoder, markers_for
    from pangu_zoo.models import from_pretrained
    from pangu_zoo.tokenizers import load_tokenizer
    from pangu_zoo.tokenizers.special import output_text

    folder, preset = FINE_TUNES[kind]
    tokenizer_path = shared_file(folder)
    c3 = tmp_path / "c3.jsonl"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_c3_sft.py"), "--data_dir", str(shared_file("c3")),
                    "--splits", "c3-d-train", "--limit", "2000", "--out", str(c3)], check=True, capture_output=True)
    assert main(["sft-preprocess", "--input", str(c3), "--tokenizer_path", str(tokenizer_path), "--seq_length",
                 "256", "--output_prefix", str(tmp_path / "data" / "c3"), "--no_progress"]) == 0
    tokenizer = load_tokenizer(kind, tokenizer_path)
    log = tmp_path / "log.jsonl"
    assert main(["train", "--stage", "sft", "--mode", preset, "--vocab_size", str(tokenizer.vocab_size),
                 "--seq_length", "256", "--data_url", str(tmp_path / "data" / "c3"), "--per_batch_size", "4",
                 "--max_steps", "40", "--start_lr", "3e-3", "--end_lr", "1e-4", "--warmup_step", "4",
                 "--decay_steps", "40", "--dropout_rate", "0", "--save_checkpoint_path", str(tmp_path / "ck"),
                 "--save_checkpoint_steps", "1000", "--log_file", str(log), "--save_pretrained",
                 str(tmp_path / "model")]) == 0
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses  # the response loss falls

    model = from_pretrained(tmp_path / "model", dropout_rate=0.0)
    markers = markers_for(tokenizer)
    turn_end = MarkerEncoder(tokenizer, markers).turn_end_id
    for line in c3.read_text(encoding="utf-8").splitlines():  # the first question whose reply fits the model
        question = json.loads(line)
        messages = [{"role": "system", "content": question["meta_prompt"]}, question["data"][0]]
        prompt = encode_chat(messages, tokenizer, markers)
        if len(prompt) + 32 <= 256:
            break
    # the prompt is the template's text with the generation prompt, the markers as their ids
    assert prompt == MarkerEncoder(tokenizer, markers).encode(render_chat(messages, True, markers))
    (output,) = model.generate([prompt], max_new_tokens=32, eos_token_id=turn_end)
    reply = output[len(prompt):]
    assert reply and reply[-1] == turn_end and turn_end not in reply[:-1], reply  # the reply ends at the turn end
    capsys.readouterr()
    assert main(["generate", "--model_dir", str(tmp_path / "model"), "--tokenizer_path", str(tokenizer_path),
                 "--chat", "--system", question["meta_prompt"], "--prompt", question["data"][0]["content"],
                 "--max_new_tokens", "32"]) == 0
    assert capsys.readouterr().out == output_text(tokenizer, reply[:-1]) + "\n"
