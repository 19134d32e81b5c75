"""PanGu-alpha forward pass against an independent NumPy implementation of reference §2.

The NumPy code below is written from the reference description only (it shares nothing with the
model code): tanh-GELU, pre-LN blocks, Q/K/V weights [out, in], projection/mapping weights [in, out],
final LayerNorm before the top-query layer, whose query is the raw top-query embedding of each
position and whose key/value come from LN1 of the final-LN output; tied head; -10000 mask bias.
"""

from __future__ import annotations

import numpy as np
import pytest


def np_layernorm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_attention(w, prefix, q_in, kv_in, mask, heads):
    b, s, h = q_in.shape
    d = h // heads

    def split(t):
        return t.reshape(b, s, heads, d).transpose(0, 2, 1, 3)

    q = split(q_in @ w[prefix + "dense1.weight"].T + w[prefix + "dense1.bias"])
    k = split(kv_in @ w[prefix + "dense2.weight"].T + w[prefix + "dense2.bias"])
    v = split(kv_in @ w[prefix + "dense3.weight"].T + w[prefix + "dense3.bias"])
    score = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    score = score + (1.0 - mask[:, None]) * -10000.0
    score = score - score.max(-1, keepdims=True)
    prob = np.exp(score)
    prob /= prob.sum(-1, keepdims=True)
    ctx = (prob @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
    return ctx @ w[prefix + "projection.weight"] + w[prefix + "projection.bias"]


def np_layer(w, prefix, x, mask, heads, query=None):
    a = np_layernorm(x, w[prefix + "layernorm1.gamma"], w[prefix + "layernorm1.beta"])
    x = x + np_attention(w, prefix + "attention.", a if query is None else query, a, mask, heads)
    m = np_layernorm(x, w[prefix + "layernorm2.gamma"], w[prefix + "layernorm2.beta"])
    hidden = np_gelu(m @ w[prefix + "output.mapping.weight"] + w[prefix + "output.mapping.bias"])
    return x + hidden @ w[prefix + "output.projection.weight"] + w[prefix + "output.projection.bias"]


def np_pangu_logits(w, ids, positions, mask, num_layers, heads):
    x = w["backbone.word_embedding.embedding_table"][ids] + w["backbone.position_embedding.embedding_table"][positions]
    for i in range(num_layers - 1):
        x = np_layer(w, f"backbone.blocks.{i}.", x, mask, heads)
    x = np_layernorm(x, w["backbone.layernorm.gamma"], w["backbone.layernorm.beta"])
    query = w["backbone.top_query_embedding.embedding_table"][positions]
    x = np_layer(w, "backbone.top_query_layer.", x, mask, heads, query=query)
    return x @ w["backbone.word_embedding.embedding_table"].T


@pytest.fixture
def randomized_pangu(tiny_pangu):
    """Give every parameter (LN and biases too) a random value so that no term can hide."""
    rng = np.random.default_rng(3)
    weights = {name: (rng.standard_normal(v.shape) * (0.2 if v.ndim > 1 else 0.5) + (1.0 if "gamma" in name else 0.0))
               .astype(np.float32) for name, v in tiny_pangu.state_dict().items()}
    tiny_pangu.load_state_dict(weights)
    return tiny_pangu, {k: v.astype(np.float64) for k, v in weights.items()}


def test_causal_logits_match_numpy(randomized_pangu):
    model, weights = randomized_pangu
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(2, 24))
    positions = np.broadcast_to(np.arange(24), ids.shape)
    mask = np.broadcast_to(np.tril(np.ones((24, 24))), (2, 24, 24))
    ref = np_pangu_logits(weights, ids, positions, mask, model.config.num_layers, model.config.num_heads)
    got = model.forward_logits(ids)
    assert np.abs(ref).max() > 10  # the logits are far from trivial
    assert np.abs(got - ref).max() <= 1e-4


def test_eod_reset_mask_and_positions_match_numpy(randomized_pangu):
    """Two documents in one row: positions restart after the EOD and the mask is block-diagonal."""
    model, weights = randomized_pangu
    seq, split = 16, 6
    ids = np.random.default_rng(1).integers(10, model.config.vocab_size, size=(1, seq))
    ids[0, split - 1] = model.config.eod_token_id
    positions = np.concatenate([np.arange(split), np.arange(seq - split)])[None, :]
    mask = np.tril(np.ones((seq, seq)))
    mask[split:, :split] = 0
    ref = np_pangu_logits(weights, ids, positions, mask[None], model.config.num_layers, model.config.num_heads)
    got = model.forward_logits(ids, attention_mask=mask[None], position_ids=positions)
    assert np.abs(got - ref).max() <= 1e-4
    # the second document alone gives the same logits as inside the packed row
    alone = model.forward_logits(ids[:, split:])
    assert np.abs(alone[0] - got[0, split:]).max() <= 1e-4
