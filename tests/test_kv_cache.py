"""Incremental decoding with the KV cache equals full recomputation, for both families."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randomize_weights

from pangu_zoo.inference.generation import IncrementalDecoder

PROMPTS = {
    1: [[3, 14, 15, 92, 65, 35, 89]],
    3: [[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46], [26, 43], [38, 32, 79, 50, 2]],
}


def randomize(model, seed):
    return randomize_weights(model, seed, 0.15, 0.3)


@pytest.fixture(params=["tiny_pangu", "tiny_gpt2"])
def model(request):
    return randomize(request.getfixturevalue(request.param), seed=11)


def full_next_logits(model, sequences):
    out = []
    for seq in sequences:
        out.append(model.forward_logits(np.array([seq]))[0, -1])
    return np.stack(out)


@pytest.mark.parametrize("batch", [1, 3])
def test_cached_logits_equal_recomputed_logits(model, batch):
    prompts = PROMPTS[batch]
    decoder = IncrementalDecoder(model)
    logits, state = decoder.prefill([np.array(p) for p in prompts], cache_len=64)
    sequences = [list(p) for p in prompts]
    rng = np.random.default_rng(batch)
    for _ in range(6):
        expected = full_next_logits(model, sequences)
        assert np.abs(logits - expected).max() <= 1e-4
        tokens = rng.integers(0, model.config.vocab_size, size=batch)  # teacher-forced, any token works
        for seq, token in zip(sequences, tokens, strict=True):
            seq.append(int(token))
        logits, state = decoder.step(tokens, state)
    assert list(state.lengths) == [len(s) for s in sequences]


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_equal_without_cache(model, batch):
    prompts = PROMPTS[batch]
    cached = model.generate(prompts, max_new_tokens=20)
    recomputed = model.generate(prompts, max_new_tokens=20, use_cache=False)
    assert cached == recomputed
    for prompt, out in zip(prompts, cached, strict=True):
        assert out[:len(prompt)] == prompt and len(out) == len(prompt) + 20
    # a batch gives each row what it gets alone
    alone = [model.generate([p], max_new_tokens=20)[0] for p in prompts]
    assert alone == cached


def test_top_query_layer_uses_true_position(tiny_pangu):
    """Changing the top-query embedding of the decode position must change the cached-path logits."""
    model = randomize(tiny_pangu, seed=5)
    decoder = IncrementalDecoder(model)
    prompt = [np.array([5, 6, 7, 8])]
    _, state = decoder.prefill(prompt, cache_len=32)
    before, _ = decoder.step(np.array([9]), state)
    weights = model.state_dict()
    table = weights["backbone.top_query_embedding.embedding_table"].copy()
    table[4] += 1.0  # the first generated token sits at position 4; position 0 stays as it was
    model.load_state_dict({**weights, "backbone.top_query_embedding.embedding_table": table})
    _, state = decoder.prefill(prompt, cache_len=32)
    after, _ = decoder.step(np.array([9]), state)
    assert np.abs(after - before).max() > 1e-3


def test_eos_stops_a_row_and_keeps_the_token(tiny_gpt2):
    model = randomize(tiny_gpt2, seed=2)
    first = model.generate([[1, 2, 3]], max_new_tokens=5)[0]
    eos = first[4]  # the second generated token
    out = model.generate([[1, 2, 3], [4, 5]], max_new_tokens=5, eos_token_id=eos)
    assert out[0] == first[:5]


def test_sharded_cache_write_equals_the_select(tiny_pangu):
    """The arithmetic cache write that sharded decoding uses (cache * (1 - slot) + new * slot) gives the same
    cache and logits as the one-device select, step after step, with rows of different lengths."""
    model = randomize(tiny_pangu, seed=5)
    prompts = [np.array(p) for p in PROMPTS[3]]
    results = []
    for sharded in (False, True):
        for block in [*model.backbone.blocks, model.backbone.top_query_layer]:
            block.attention.sharded_cache_write = sharded
        model.set_graph_wrapper(None)  # rebuild the graphs with the flag
        decoder = IncrementalDecoder(model, chunked=False)  # the one-pass prefill and "decode" graph both ways
        logits, state = decoder.prefill(prompts, cache_len=32)
        steps = [logits]
        for token in ([5, 6, 7], [8, 9, 10]):
            logits, state = decoder.step(np.array(token), state)
            steps.append(logits)
        results.append((steps, [t.asnumpy() for t in state.cache]))
    (select_steps, select_cache), (arith_steps, arith_cache) = results
    for a, b in zip(select_steps, arith_steps, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(select_cache, arith_cache, strict=True):
        np.testing.assert_array_equal(a, b)
