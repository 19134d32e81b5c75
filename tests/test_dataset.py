"""Training dataset: EOD reset rule (hand example + brute-force reference), sample order, MindSpore pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import shared_file

from pangu_zoo.data import preprocess
from pangu_zoo.data.dataset import create_dataset, sample_order
from pangu_zoo.data.masks import eod_reset_positions_and_mask, loss_mask


def reference_eod_reset(ids: np.ndarray, eod_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference loop (pangu_alpha.md §5.2), row by row, on the model inputs ids [b, s]."""
    batch, seq = ids.shape
    positions = np.zeros((batch, seq), dtype=np.int64)
    masks = np.zeros((batch, seq, seq), dtype=np.int64)
    for row in range(batch):
        position = np.arange(seq)
        mask = np.tril(np.ones((seq, seq), dtype=np.int64))
        previous = 0
        for p in np.nonzero(ids[row] == eod_id)[0]:
            mask[p + 1:, :p + 1] = 0
            position[p + 1:] -= p + 1 - previous
            previous = p + 1
        positions[row], masks[row] = position, mask
    return positions, masks


def test_hand_computed_example():
    tokens = np.array([[11, 6, 12, 13, 6, 14]])
    positions, mask = eod_reset_positions_and_mask(tokens, eod_id=6)
    assert positions.dtype == np.int32 and mask.dtype == np.int8
    assert positions.tolist() == [[0, 1, 0, 1, 2, 0]]
    assert mask[0].tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


@pytest.mark.parametrize("eod_rate", [0.0, 0.05, 0.3, 1.0])
def test_matches_reference_loop(eod_rate):
    rng = np.random.default_rng(int(eod_rate * 100))
    tokens = rng.integers(10, 50, size=(4, 64))
    tokens[rng.random(tokens.shape) < eod_rate] = 6
    tokens[1, -1] = 6  # EOD as the last input
    tokens[2, :3] = 6  # consecutive EODs at the start
    positions, mask = eod_reset_positions_and_mask(tokens, eod_id=6)
    expected_positions, expected_mask = reference_eod_reset(tokens, 6)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_array_equal(mask, expected_mask)


def test_loss_mask_is_on_inputs():
    assert loss_mask(np.array([[5, 6, 7, 6]]), pad_id=6).tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_sample_order_shards_are_disjoint_deterministic_and_resumable():
    orders = [sample_order(103, rank, 4, shuffle=True, seed=3) for rank in range(4)]
    assert all(len(order) == 25 for order in orders)
    everything = np.concatenate(orders)
    assert len(set(everything.tolist())) == 100
    np.testing.assert_array_equal(orders[1], sample_order(103, 1, 4, shuffle=True, seed=3))
    assert not np.array_equal(sample_order(103, 0, 1, seed=3), sample_order(103, 0, 1, seed=4))
    # resuming after 8 global samples (2 steps of 4 ranks) continues each rank's own sequence
    for rank in range(4):
        resumed = sample_order(103, rank, 4, shuffle=True, seed=3, start=8)
        np.testing.assert_array_equal(resumed[:23], orders[rank][2:])
    assert sample_order(5, 0, 1, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def packed_corpus(tmp_path_factory):
    """A small GPT-2 MindRecord dataset (2 partitions, samples of 17 ids) and the expected samples."""
    vocab = shared_file("gpt2_bpe")
    text = shared_file("tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:6000]
    root = tmp_path_factory.mktemp("packed")
    (root / "plays.txt").write_text(text, encoding="utf-8")
    out = root / "out"
    assert preprocess.main(["--input_glob", str(root / "*.txt"), "--tokenizer", "gpt", "--vocab_dir", str(vocab),
                            "--seq_length", "17", "--file_partition", "2", "--output_file", str(out / "plays"),
                            "--no_progress"]) == 0
    from pangu_zoo.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("gpt2", vocab)
    stream = []
    for paragraph in text.split("\n\n"):
        if paragraph.strip():
            stream += tokenizer.encode(paragraph.strip("\n")) + [50256]
    samples = np.array(stream[:len(stream) // 17 * 17]).reshape(-1, 17)
    return out, samples


def test_mindrecord_partitions_hold_distinct_shares(packed_corpus):
    import mindspore.dataset as ds

    out, expected = packed_corpus
    rows = []
    for partition in ("plays0", "plays1"):
        dataset = ds.MindDataset([str(out / partition)], columns_list=["input_ids"], shuffle=False)
        rows.append([row[0] for row in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)])
    assert [len(r) for r in rows] == [(len(expected) + 1) // 2, len(expected) // 2]
    np.testing.assert_array_equal(np.stack(rows[0]), expected[0::2])
    np.testing.assert_array_equal(np.stack(rows[1]), expected[1::2])
    assert rows[0][0].dtype == np.int32


def test_create_dataset_batches(packed_corpus):
    out, expected = packed_corpus
    by_row = {tuple(row): index for index, row in enumerate(expected.tolist())}
    seen = []
    for rank in range(2):
        dataset = create_dataset(3, out, device_num=2, rank=rank, seed=5)
        assert dataset.get_col_names() == ["input_ids", "position_ids", "attention_mask", "loss_mask"]
        for batch in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
            ids = batch["input_ids"]
            assert ids.shape == (3, 17) and batch["attention_mask"].shape == (3, 16, 16)
            positions, mask = reference_eod_reset(ids[:, :-1], 50256)
            np.testing.assert_array_equal(batch["position_ids"], positions)
            np.testing.assert_array_equal(batch["attention_mask"], mask)
            np.testing.assert_array_equal(batch["loss_mask"], ids[:, :-1] != 50256)
            seen += [by_row[tuple(row)] for row in ids.tolist()]
    # MindDataset numbers the samples file by file: partition 0 holds samples 0, 2, 4...; partition 1 1, 3, ...
    stored = np.concatenate([np.arange(len(expected))[0::2], np.arange(len(expected))[1::2]])
    permutation = stored[np.random.RandomState(5).permutation(len(expected))]
    per_rank = len(expected) // 2
    batches = per_rank // 3 * 3
    assert seen == permutation[0::2][:batches].tolist() + permutation[1::2][:batches].tolist()


def test_create_dataset_resumes_from_offset(packed_corpus):
    out, expected = packed_corpus

    def first_ids(start):
        dataset = create_dataset(2, out, data_start_index=start, seed=9)
        return [b["input_ids"] for b in dataset.create_dict_iterator(output_numpy=True, num_epochs=1)]

    full, resumed = first_ids(0), first_ids(4)
    assert len(resumed) == len(full) - 2
    np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(full[2:]))


def test_create_dataset_reads_megatron(tmp_path):
    from pangu_zoo.data.megatron import MegatronWriter

    writer = MegatronWriter(tmp_path / "corpus", np.uint16)
    tokens = np.arange(1, 45) % 7  # 44 tokens, 6 is the eod id
    writer.add_document(tokens[:20])
    writer.add_document(tokens[20:])
    writer.finish()
    dataset = create_dataset(2, tmp_path / "corpus", eod_id=6, pad_id=0, seq_length=10, shuffle=False)
    batches = list(dataset.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert len(batches) == 2  # 44 // 11 = 4 samples
    np.testing.assert_array_equal(batches[1]["input_ids"], tokens[22:44].reshape(2, 11))
