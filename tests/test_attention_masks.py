"""The masks of the in-place cache graphs, whose new positions attend beside the cache, say what the masks of
a cache that holds the new positions say (the one-pass prefill's rule, re-derived here)."""

from __future__ import annotations

import numpy as np

from pangu_zoo.attention_masks import MASK_VALUE, beside_cache_bias, decode_bias, step_bias_beside, visible_keys_mask


def _in_cache_mask(seen: np.ndarray, start: int, length: int) -> np.ndarray:
    """[B, L, T]: query start+i sees slot j when j <= start+i and slot j is visible, or j is itself."""
    slots = np.arange(seen.shape[1])[None, None, :]
    query = np.arange(start, start + length)[None, :, None]
    return ((slots <= query) & seen[:, None, :]) | (slots == query)


def test_chunk_beside_the_cache_equals_the_chunk_written_into_it():
    rng = np.random.default_rng(0)
    seen = rng.random((3, 40)) < 0.7
    start, length, cache_len = 16, 8, 40
    cached = np.broadcast_to(((np.arange(cache_len) < start) & seen)[:, None, :], (3, length, cache_len))
    bias = beside_cache_bias(cached, visible_keys_mask(seen[:, start:start + length]))
    assert bias.shape == (3, 1, length, cache_len + length) and set(np.unique(bias)) <= {0.0, MASK_VALUE}
    expected = _in_cache_mask(seen, start, length)
    rearranged = np.concatenate((expected[..., :start], np.zeros((3, length, cache_len - start), bool),
                                 expected[..., start:start + length]), axis=-1)
    np.testing.assert_array_equal(bias[:, 0] == 0, rearranged)
    assert not expected[..., start + length:].any()  # nothing after the chunk was visible before either


def test_step_bias_beside_moves_the_own_slot_to_the_end():
    rng = np.random.default_rng(1)
    lengths, cache_len = np.array([0, 5, 11]), 16
    visible = rng.random((3, cache_len)) < 0.6
    beside, in_cache = step_bias_beside(lengths, cache_len, visible), decode_bias(lengths, cache_len, visible)
    assert beside.shape == (3, 1, 1, cache_len + 1)
    for row, length in enumerate(lengths):
        expected = in_cache[row, 0, 0].copy()
        expected[length] = MASK_VALUE  # the own slot: its key comes in beside the cache, in the last column
        np.testing.assert_array_equal(beside[row, 0, 0, :cache_len], expected)
        assert beside[row, 0, 0, cache_len] == 0.0
