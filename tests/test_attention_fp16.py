"""fp16 attention at the activation scale of the 2.6B model: q and k are each scaled by d^-1/4 before q·kᵀ
(the reference's order), so the scores stay inside the fp16 range.

The cells run in graph mode on the CPU backend, whose BatchMatMul/MatMul/Mul kernels take fp16, so this is
the model's own fp16 path (not an emulation). Q, K, V and the output projection are identities, which puts
the chosen activations straight into q, k and v: entries of size 30-35 with head_dim 80, so each unscaled
q·q is above 80 x 30² = 72000 > 65504 and would overflow to inf.
"""

from __future__ import annotations

import numpy as np
import pytest
from mindspore import nn

HEAD_DIM, HEADS, SEQ = 80, 2, 8
HIDDEN = HEAD_DIM * HEADS


class _Scores(nn.Cell):
    def __init__(self, attention) -> None:
        super().__init__()
        self.attention = attention

    def construct(self, q, k):
        return self.attention._scores(self.attention._scale(q), self.attention._scale(k))


class _Step(nn.Cell):
    def __init__(self, attention) -> None:
        super().__init__()
        self.attention = attention

    def construct(self, x, bias, slot, k_cache, v_cache):
        return self.attention.step(x, x, bias, slot, k_cache, v_cache)


@pytest.fixture(scope="module")
def fp16_attention():
    """An fp16-compute Attention whose Q/K/V/output maps are identities (built here: it is mutated)."""
    import mindspore as ms

    from pangu_zoo.config import ModelConfig
    from pangu_zoo.models.layers import Attention
    from pangu_zoo.runtime import use_graph_mode

    use_graph_mode()
    config = ModelConfig(family="pangu_alpha", vocab_size=100, hidden_size=HIDDEN, num_heads=HEADS, num_layers=2,
                         dropout_rate=0.0, compute_dtype="float16")
    attention = Attention(config, out_std=0.02)
    for dense in (attention.dense1, attention.dense2, attention.dense3, attention.projection):
        dense.weight.set_data(ms.Tensor(np.eye(HIDDEN, dtype=np.float32)))
        dense.bias.set_data(ms.Tensor(np.zeros(HIDDEN, dtype=np.float32)))
    return attention


def large_activations(seed: int) -> np.ndarray:
    """[1, SEQ, HIDDEN] fp16 with |entries| in [30, 35]."""
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(30.0, 35.0, size=(1, SEQ, HIDDEN))
    return (rng.choice([-1.0, 1.0], size=magnitude.shape) * magnitude).astype(np.float16)


def heads(x: np.ndarray) -> np.ndarray:
    return x.reshape(1, SEQ, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)


def reference_attention(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fp64 softmax(q·kᵀ/sqrt(d) + (1 - mask)·-10000)·v with q = k = v = x, heads merged -> [1, S, h]."""
    q = heads(x.astype(np.float64))
    scores = q @ q.transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM) + (1.0 - mask) * -10000.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ q).transpose(0, 2, 1, 3).reshape(1, SEQ, HIDDEN)


def causal_bias() -> np.ndarray:
    return np.where(np.tril(np.ones((SEQ, SEQ))) > 0, 0.0, -10000.0).astype(np.float32)[None, None]


def test_unscaled_products_would_overflow_fp16():
    q = heads(large_activations(0).astype(np.float64))
    assert (np.einsum("bnsd,bnsd->bns", q, q) > np.finfo(np.float16).max).all()


def test_fp16_scores_are_finite_and_match_float64(fp16_attention):
    import mindspore as ms

    q, k = heads(large_activations(0)), heads(large_activations(1))
    k[..., :4, :] = q[..., :4, :]  # some keys equal their query: the largest products, far past 65504
    scores = _Scores(fp16_attention)(ms.Tensor(q), ms.Tensor(k)).asnumpy()
    expected = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    assert np.abs(expected).max() > 7000
    # fp16 rounding of the scaled inputs and of the product: a few parts in 1e3 of the largest score
    np.testing.assert_allclose(scores, expected, rtol=0, atol=5e-3 * np.abs(expected).max())


def test_fp16_attention_output_is_finite_and_matches_float64(fp16_attention):
    import mindspore as ms

    x = large_activations(2)
    bias = causal_bias()
    out, k, v = fp16_attention(ms.Tensor(x), ms.Tensor(x), ms.Tensor(bias))
    out = out.asnumpy().astype(np.float64)
    assert np.isfinite(out).all() and np.isfinite(k.asnumpy()).all()
    expected = reference_attention(x, np.tril(np.ones((SEQ, SEQ))))
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=0.05)


def test_fp16_decode_step_matches_the_full_pass(fp16_attention):
    """The decode path scales the new query and key the same way: the last position's output equals the full
    pass's, with the cache holding the first SEQ - 1 (already scaled) keys."""
    import mindspore as ms

    x = large_activations(3)
    full, _, _ = fp16_attention(ms.Tensor(x), ms.Tensor(x), ms.Tensor(causal_bias()))
    prefix_bias = causal_bias()[:, :, :SEQ - 1, :SEQ - 1]
    _, k, v = fp16_attention(ms.Tensor(x[:, :SEQ - 1]), ms.Tensor(x[:, :SEQ - 1]), ms.Tensor(prefix_bias))
    pad = ms.Tensor(np.zeros((1, HEADS, 1, HEAD_DIM), dtype=np.float16))
    k_cache, v_cache = ms.ops.concat((k, pad), axis=2), ms.ops.concat((v, pad), axis=2)
    slot = (np.arange(SEQ) == SEQ - 1)[None, None, :, None]
    bias = np.zeros((1, 1, 1, SEQ), dtype=np.float32)
    out, _, _ = _Step(fp16_attention)(ms.Tensor(x[:, SEQ - 1:]), ms.Tensor(bias), ms.Tensor(slot), k_cache, v_cache)
    out = out.asnumpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 0], full.asnumpy()[0, -1], rtol=2e-3, atol=0.05)
