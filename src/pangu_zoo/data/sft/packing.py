"""Packing SFT samples into rows of exactly `seq_length` tokens (formats.md §6.4, with one change).

As the demo: samples longer than `seq_length` are dropped (counted); the lengths are put into knapsacks of
capacity `seq_length` greedily (ascending sort; each knapsack repeatedly takes the largest length that still
fits, found by bisection); a knapsack's samples are concatenated, each length taken by the last sample of that
length not yet used; the row is padded to `seq_length` with the pad id and label -100.

The change: the demo writes attention_mask 1 for every token, padding included. Here padding gets 0 and the
tokens of the k-th sample of a row get k (1, 2, 3, ...), so training can keep samples apart; a reader that
takes the mask as 0/1 still sees "nonzero = real token".
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pangu_zoo.data.sft.labels import IGNORE_INDEX


def greedy_knapsack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The lengths of each knapsack, in the demo's order (every length must be <= capacity).

    The demo pops from one sorted list of all lengths, quadratic in their number; equal lengths are
    interchangeable, so a sorted list of the distinct lengths with a count each gives the same knapsacks.
    """
    counts: dict[int, int] = defaultdict(int)
    for length in lengths:
        counts[int(length)] += 1
    distinct = sorted(counts)
    knapsacks = []
    while distinct:
        knapsack, remaining = [], capacity
        while (index := bisect.bisect(distinct, remaining)) > 0:
            length = distinct[index - 1]
            knapsack.append(length)
            remaining -= length
            counts[length] -= 1
            if counts[length] == 0:
                distinct.pop(index - 1)
        if not knapsack:
            raise ValueError(f"length {distinct[0]} does not fit the capacity {capacity}")
        knapsacks.append(knapsack)
    return knapsacks


@dataclass
class PackedRow:
    """One row: input_ids, attention_mask (sample number, 0 = padding) and labels, int32 [seq_length] each."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray


@dataclass
class PackingPlan:
    """Which samples make each row (indices into the sample list), and the over-long ones left out."""

    rows: list[list[int]]
    dropped: list[int]


def plan_packing(lengths: Sequence[int], seq_length: int) -> PackingPlan:
    """The demo's packing of samples with these lengths into rows of `seq_length`."""
    by_length: dict[int, list[int]] = defaultdict(list)
    dropped = []
    for index, length in enumerate(lengths):
        if length > seq_length:
            dropped.append(index)
        else:
            by_length[int(length)].append(index)
    kept = [length for length in lengths if length <= seq_length]
    rows = [[by_length[length].pop() for length in knapsack] for knapsack in greedy_knapsack(kept, seq_length)]
    return PackingPlan(rows, dropped)


def packed_rows(samples: Sequence[tuple[np.ndarray, np.ndarray]], plan: PackingPlan, seq_length: int,
                pad_id: int) -> Iterator[PackedRow]:
    """The rows of `plan` built from `samples` ((input_ids, labels) pairs), padded to `seq_length`."""
    for row in plan.rows:
        input_ids = np.full(seq_length, pad_id, dtype=np.int32)
        attention_mask = np.zeros(seq_length, dtype=np.int32)
        labels = np.full(seq_length, IGNORE_INDEX, dtype=np.int32)
        start = 0
        for number, index in enumerate(row, start=1):
            ids, sample_labels = samples[index]
            end = start + len(ids)
            input_ids[start:end], labels[start:end], attention_mask[start:end] = ids, sample_labels, number
            start = end
        yield PackedRow(input_ids, attention_mask, labels)
