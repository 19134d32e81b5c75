"""Chunked prefill (the "extend" graph) equals the one-pass prefill and full recomputation, and generation with it
gives transformers' greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randomize_weights

import pangu_zoo.inference.generation as generation
from pangu_zoo.inference.generation import IncrementalDecoder, chunk_length

# no PanGu-alpha pad/eod id (6), which generation hides from later positions and `forward_logits` does not
PROMPTS = [list(range(7, 44)), [26, 43], [(7 * i) % 900 + 10 for i in range(61)]]


@pytest.fixture(params=["tiny_pangu", "tiny_gpt2"])
def model(request):
    return randomize_weights(request.getfixturevalue(request.param), 23, 0.15, 0.3)


def test_chunk_length():
    assert chunk_length(1, 48, 64) == 48  # fits the budget: one chunk
    assert chunk_length(8, 512, 576) == 16  # 128 positions per chunk over 8 rows
    assert chunk_length(1, 512, 576) == 128
    assert chunk_length(2, 112, 128) == 64  # 2 equal chunks of 56, rounded up to the bucket
    assert chunk_length(3, 112, 112) == 16  # 4 chunks of 32 would overrun the cache: chunks of the bucket
    assert chunk_length(3, 120, 120) == 120  # not even those fit (a cache shorter than the bucketed prompt)
    assert chunk_length(64, 32, 64) == 16  # never below the prefill bucket


@pytest.mark.parametrize("positions", [48, 16])
def test_chunked_prefill_equals_the_one_pass_prefill(model, monkeypatch, positions):
    """Every chunking gives the one-pass prefill's next-token logits and cache, and the same decode steps after."""
    monkeypatch.setattr(generation, "CHUNK_POSITIONS", positions)
    monkeypatch.setattr(generation, "STEP_PREFILL_POSITIONS", 0)
    prompts = [np.array(p) for p in PROMPTS]
    results = []
    for chunked in (True, False):
        decoder = IncrementalDecoder(model, chunked=chunked)
        logits, state = decoder.prefill(prompts, cache_len=128)
        steps = [logits]
        for token in ([5, 6, 7], [8, 9, 10]):
            logits, state = decoder.step(np.array(token), state)
            steps.append(logits)
        cache = [np.asarray(t.asnumpy()) for t in state.cache]
        results.append((steps, cache, state.lengths))
    (chunked_steps, chunked_cache, lengths), (one_steps, one_cache, one_lengths) = results
    np.testing.assert_array_equal(lengths, one_lengths)
    for a, b in zip(chunked_steps, one_steps, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for a, b in zip(chunked_cache, one_cache, strict=True):
        for row, n in enumerate(lengths):  # slots past a row's length hold padding, never visible
            np.testing.assert_allclose(a[row, :, :n], b[row, :, :n], rtol=0, atol=1e-5)


def test_chunked_prefill_equals_full_recomputation(model, monkeypatch):
    monkeypatch.setattr(generation, "CHUNK_POSITIONS", 16)
    decoder = IncrementalDecoder(model, chunked=True)
    logits, state = decoder.prefill([np.array(p) for p in PROMPTS], cache_len=128)
    for row, prompt in enumerate(PROMPTS):
        expected = model.forward_logits(np.array([prompt]))[0, -1]
        np.testing.assert_allclose(logits[row], expected, rtol=0, atol=1e-4)
    tokens = np.array([11, 12, 13])
    logits, state = decoder.step(tokens, state)
    for row, prompt in enumerate(PROMPTS):
        expected = model.forward_logits(np.array([prompt + [int(tokens[row])]]))[0, -1]
        np.testing.assert_allclose(logits[row], expected, rtol=0, atol=1e-4)


def test_one_pass_only_models_refuse_chunks(model):
    from pangu_zoo.errors import InputError

    class OnePass:  # an exported model offers no "extend" graph
        config = model.config

    with pytest.raises(InputError, match="one pass only"):
        IncrementalDecoder(OnePass(), chunked=True)
    assert not IncrementalDecoder(OnePass()).chunked


def test_greedy_tokens_equal_transformers_through_chunks(monkeypatch, tmp_path):
    """GPT-2 prompts longer than a chunk: the greedy tokens of transformers, row by row and as one batch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pangu_zoo.models import from_pretrained

    monkeypatch.setattr(generation, "CHUNK_POSITIONS", 32)
    torch.manual_seed(3)
    config = transformers.GPT2Config(vocab_size=1000, n_positions=256, n_embd=64, n_layer=3, n_head=4,
                                     initializer_range=0.2, bos_token_id=999, eos_token_id=999, pad_token_id=999)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    prompts = [[(5 * i + 3) % 997 for i in range(70)], [(11 * i + 1) % 997 for i in range(45)]]
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            ids = torch.tensor([prompt])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=999)
        expected.append(out[0].tolist())
    assert ours.generate(prompts, max_new_tokens=12) == expected
    assert [ours.generate([p], max_new_tokens=12)[0] for p in prompts] == expected


def test_decoding_writes_the_cache_in_place(model):
    decoder = IncrementalDecoder(model, chunked=True)
    _, state = decoder.prefill([np.array(p) for p in PROMPTS[:2]], cache_len=64)
    arrays = state.arrays
    before = [a.copy() for a in arrays]
    _, after = decoder.step(np.array([5, 7]), state)  # not the pad id, whose key the prefill wrote there
    assert after.arrays is arrays and all(a is b for a, b in zip(after.arrays, arrays, strict=True))
    for old, new, tensor in zip(before, arrays, after.cache, strict=True):
        changed = np.argwhere(np.any(old != new, axis=(1, 3)))  # (row, slot) pairs the step wrote
        assert sorted(map(tuple, changed)) == [(0, len(PROMPTS[0])), (1, len(PROMPTS[1]))]
        np.testing.assert_array_equal(tensor.asnumpy(), new)  # the tensors the graphs read are the arrays


def test_state_rows_concat_and_padding_agree_for_arrays_and_tensors():
    import mindspore as ms

    from pangu_zoo.inference.generation import DecodeState

    rng = np.random.default_rng(0)
    arrays = tuple(rng.standard_normal((3, 2, 8, 4)).astype(np.float32) for _ in range(4))
    lengths, visible = np.array([3, 5, 1]), rng.random((3, 8)) > 0.5
    in_place = DecodeState.over(arrays, lengths, visible)
    tensors = DecodeState(tuple(ms.Tensor(a) for a in arrays), lengths, visible)
    results = []
    for state in (in_place, tensors):
        joined = DecodeState.concat([state.rows([2, 0]), state.rows([1])]).padded(2)
        results.append(joined)
        assert (joined.arrays is not None) == (state is in_place)
    for a, b in zip(results[0].cache, results[1].cache, strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    expected = np.concatenate([arrays[0][[2, 0, 1]], np.zeros((2, 2, 8, 4), np.float32)])
    np.testing.assert_array_equal(results[0].cache[0].asnumpy(), expected)
    np.testing.assert_array_equal(results[0].lengths, [1, 3, 5, 0, 0])
    assert not results[0].visible[3:].any()


def test_single_row_head_runs_on_the_host_and_equals_the_compiled_head(model):
    """One fp32 row: the step graph stops at the final hidden state and NumPy applies the tied head; its logits
    equal the compiled head's and the full recomputation's, and the decode steps equal recomputation."""
    assert model.head_on_host(1) and not model.head_on_host(2)
    model._graphs.clear()
    hidden = np.random.default_rng(3).standard_normal((1, model.config.hidden_size)).astype(np.float32)
    compiled = model.graph("head")(generation.ms.Tensor(hidden)).asnumpy()
    table = np.asarray(model.state_dict()["backbone.word_embedding.embedding_table"], np.float64)
    np.testing.assert_allclose(model.head_logits(hidden), hidden.astype(np.float64) @ table.T, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.head_logits(hidden), compiled, rtol=0, atol=1e-5)

    decoder = IncrementalDecoder(model)
    sequence = list(PROMPTS[0])
    logits, state = decoder.prefill([np.array(sequence)], cache_len=64)
    for _ in range(4):
        np.testing.assert_allclose(logits[0], model.forward_logits(np.array([sequence]))[0, -1], rtol=0, atol=1e-4)
        sequence.append(int(logits[0].argmax()))
        logits, state = decoder.step(np.array(sequence[-1:]), state)
    assert "step_hidden" in model._graphs and "step" not in model._graphs


def test_half_precision_keeps_the_compiled_head(tiny_gpt2):
    """fp16 rounds the head's product as the model's graphs do, so it is not moved to NumPy's fp32."""
    from pangu_zoo.models import build_model

    half = build_model(tiny_gpt2.config.replace(compute_dtype="float16"))
    assert not half.head_on_host(1)


@pytest.mark.parametrize("rows", [1, 3])
def test_first_short_prompt_goes_in_by_steps_then_by_chunks(model, rows):
    """A short prompt shape's first prefill runs position by position through the decode-step graph (no "extend"
    compiled), its second through "extend"; both equal the one-pass prefill, logits and cache."""
    prompts = [np.array(p) for p in PROMPTS[:rows]]
    model.prefilled_shapes.clear()
    model._graphs.clear()
    expected_logits, expected = IncrementalDecoder(model, chunked=False).prefill(prompts, cache_len=128)
    for graph in ("step_hidden" if rows == 1 else "step", "extend"):
        logits, state = IncrementalDecoder(model).prefill(prompts, cache_len=128)
        assert graph in model._graphs and (graph == "extend") == ("extend" in model._graphs)
        np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
        for a, b in zip(state.cache, expected.cache, strict=True):
            for row, n in enumerate(len(p) for p in prompts):
                np.testing.assert_allclose(a.asnumpy()[row, :, :n], b.asnumpy()[row, :, :n], rtol=0, atol=1e-5)
