"""What `generate` accepts (integer ids, padding masks for every input form) and how PanGu-alpha treats its
pad/eod id inside a prompt (hidden from later positions, positions kept, as the reference's predict)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randomize_weights

from pangu_zoo.errors import InputError
from pangu_zoo.inference.generation import IncrementalDecoder

PAD = 6  # PanGu-alpha's pad/eod id


@pytest.mark.parametrize("ids", [[[11.0, 25.0, 301.0]], [[11, 25.5, 301]], np.array([11, 25, 301], np.float32),
                                 [np.array([11.0, 25.0])], np.array([[True, False]])])
def test_non_integer_ids_are_refused(tiny_pangu, ids):
    with pytest.raises(InputError, match="integer token ids"):
        tiny_pangu.generate(ids, max_new_tokens=2)


@pytest.mark.parametrize("as_array", [False, True])
def test_attention_mask_drops_padding_on_either_side(tiny_pangu, as_array):
    rows = [[11, 25, 301, 7], [PAD, PAD, 99, 12], [40, 41, PAD, PAD]]
    mask = [[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]
    ids, mask = (np.array(rows), np.array(mask)) if as_array else (rows, mask)
    out = tiny_pangu.generate(ids, max_new_tokens=4, attention_mask=mask)
    alone = [tiny_pangu.generate([p], max_new_tokens=4)[0] for p in ([11, 25, 301, 7], [99, 12], [40, 41])]
    assert out == alone


def test_ragged_rows_take_a_ragged_mask(tiny_pangu):
    out = tiny_pangu.generate([[PAD, 99, 12], [11, 25]], max_new_tokens=3, attention_mask=[[0, 1, 1], [1, 1]])
    assert [row[:2] for row in out] == [[99, 12], [11, 25]]
    assert out[0] == tiny_pangu.generate([[99, 12]], max_new_tokens=3)[0]


@pytest.mark.parametrize("mask, message", [
    ([[1, 1], [1]], "row 0 has shape"),
    ([[1, 1, 1]], "1 rows, input_ids has 2"),
    ([[1, 2, 1], [1, 1]], "other than 0 and 1"),
    ([[0, 0, 0], [1, 1]], "at least one token"),
])
def test_bad_attention_masks_are_refused(tiny_pangu, mask, message):
    with pytest.raises(InputError, match=message):
        tiny_pangu.generate([[PAD, 99, 12], [11, 25]], max_new_tokens=2, attention_mask=mask)


def randomized(name: str, seed: int, **overrides):
    """A small model of its own with every weight random, so that masking any key shows in the logits."""
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(seed)
    model = build_model(name, vocab_size=100, dropout_rate=0.0, max_position_embeddings=64, **overrides)
    return randomize_weights(model, seed, 0.15, 0.3)


@pytest.fixture(scope="module")
def pangu():
    return randomized("pangu_alpha_tiny", 4, num_layers=2)


def reference_mask(ids: list[int]) -> np.ndarray:
    """The reference's predict mask, (m_i·m_j)·tril with m = ids != 6, on the rows of real tokens. The row of a
    pad token, empty in the reference, sees the real tokens before it and itself."""
    m = np.array(ids) != PAD
    return (np.tril(np.broadcast_to(m, (len(ids), len(ids)))) | np.eye(len(ids), dtype=bool))[None]


def test_pad_in_a_prompt_is_hidden_and_positions_are_kept(pangu):
    prompt = [11, PAD, 25, 30, PAD, 41]
    logits, _ = IncrementalDecoder(pangu).prefill([np.array(prompt)])
    expected = pangu.forward_logits(np.array([prompt]), attention_mask=reference_mask(prompt))[0, -1]
    np.testing.assert_allclose(logits[0], expected, rtol=0, atol=1e-4)
    attended = pangu.forward_logits(np.array([prompt]))[0, -1]  # the pad tokens as ordinary keys
    assert np.abs(logits[0] - attended).max() > 1e-2
    dropped = [t for t in prompt if t != PAD]  # hidden is not removed: the later tokens keep their positions
    assert np.abs(logits[0] - pangu.forward_logits(np.array([dropped]))[0, -1]).max() > 1e-2


def test_a_prompt_ending_with_the_pad_id_sees_the_tokens_before_it(pangu):
    prompt = [11, 25, 30, PAD]
    logits, _ = IncrementalDecoder(pangu).prefill([np.array(prompt)])
    expected = pangu.forward_logits(np.array([prompt]), attention_mask=reference_mask(prompt))[0, -1]
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits[0], expected, rtol=0, atol=1e-4)


def test_cached_decoding_hides_pad_tokens_like_recomputation(pangu):
    """Pad ids in the prompt and among the fed tokens stay hidden in the cache, step after step."""
    prompts = [[11, PAD, 25, 30], [PAD, 7, 8], [9, 10, 12, 13, 14]]
    decoder = IncrementalDecoder(pangu)
    logits, state = decoder.prefill([np.array(p) for p in prompts], cache_len=32)
    sequences = [list(p) for p in prompts]
    for tokens in ([PAD, 3, 4], [5, PAD, PAD], [17, 18, 19]):
        for row, seq in enumerate(sequences):
            expected = pangu.forward_logits(np.array([seq]), attention_mask=reference_mask(seq))[0, -1]
            np.testing.assert_allclose(logits[row], expected, rtol=0, atol=1e-4)
            seq.append(tokens[row])
        logits, state = decoder.step(np.array(tokens), state)
    assert pangu.generate(prompts, max_new_tokens=8) == pangu.generate(prompts, max_new_tokens=8, use_cache=False)


def test_gpt2_attends_to_its_end_of_text_id_as_transformers():
    model = randomized("gpt2-tiny", 5, eod_token_id=99, pad_token_id=99, eos_token_id=99)
    prompt = [11, 99, 25, 30]
    logits, _ = IncrementalDecoder(model).prefill([np.array(prompt)])
    np.testing.assert_allclose(logits[0], model.forward_logits(np.array([prompt]))[0, -1], rtol=0, atol=1e-4)
