"""The mixture-of-experts layer against a token-by-token NumPy re-implementation of its routing rules
(docs/moe.md), and against the dense FFN when there is one expert."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest

from pangu_zoo.config import MoEConfig, get_preset
from pangu_zoo.models.layers import FeedForward
from pangu_zoo.models.moe import MixtureOfExperts
from pangu_zoo.runtime import use_graph_mode


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def numpy_moe(x, router, w1, b1, w2, b2, k, capacity_factor, groups, training):
    """Token-by-token MoE: returns (y [N, h], load-balance term summed over rounds and averaged over groups,
    kept picks per expert)."""
    n, h = x.shape
    experts = router.shape[1]
    t_group = n // groups
    capacity = math.ceil(k * t_group * capacity_factor / experts) if training else t_group
    y = np.zeros_like(x, dtype=np.float64)
    balance = 0.0
    load = np.zeros(experts)
    for g in range(groups):
        xs = x[g * t_group:(g + 1) * t_group].astype(np.float64)
        logits = xs @ router
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        chosen = [set() for _ in range(t_group)]
        held = np.zeros(experts, dtype=int)
        combine = np.zeros((t_group, experts, capacity))
        for _ in range(k):
            remaining = probs.copy()
            for t in range(t_group):
                remaining[t, sorted(chosen[t])] = 0.0
            picks = [int(np.argmax(remaining[t])) for t in range(t_group)]
            renormalised = remaining / remaining.sum(1, keepdims=True)
            density = np.array([sum(p == e for p in picks) / t_group for e in range(experts)])
            balance += np.mean(density * renormalised.mean(0)) * experts * experts / groups
            seen = np.zeros(experts, dtype=int)
            kept_now = np.zeros(experts, dtype=int)
            for t, e in enumerate(picks):
                slot = held[e] + seen[e]
                seen[e] += 1
                chosen[t].add(e)
                if slot < capacity:
                    combine[t, e, slot] += probs[t, e]
                    kept_now[e] += 1
            held += kept_now
        if k > 1:
            combine /= combine.sum((1, 2), keepdims=True) + 1e-9
        load += held
        for t in range(t_group):
            for e in range(experts):
                for c in range(capacity):
                    if combine[t, e, c] != 0.0:
                        out = gelu_tanh(xs[t] @ w1[e] + b1[e, 0]) @ w2[e] + b2[e, 0]
                        y[g * t_group + t] += combine[t, e, c] * out
    return y, balance, load


def _cell(experts, k, capacity_factor, groups, seed, hidden=16, ffn=24):
    config = get_preset("pangu_alpha_tiny", hidden_size=hidden, num_heads=4, ffn_hidden_size=ffn, dropout_rate=0.0,
                        moe=MoEConfig(expert_num=experts, num_experts_chosen=k, capacity_factor=capacity_factor,
                                      aux_loss_factor=0.05))
    cell = MixtureOfExperts(config, 0.02)
    cell.groups = groups
    rng = np.random.default_rng(seed)
    for param in (cell.router.weight, cell.mapping.weight, cell.mapping.bias, cell.projection.weight,
                  cell.projection.bias):
        param.set_data(ms.Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
    return cell


def _weights(cell):
    return [p.asnumpy().astype(np.float64) for p in (cell.router.weight, cell.mapping.weight, cell.mapping.bias,
                                                      cell.projection.weight, cell.projection.bias)]


@pytest.mark.parametrize("experts, k, capacity_factor, groups, tokens", [
    (4, 1, 1.0, 1, 24),   # tight capacity: drops
    (4, 1, 4.0, 1, 24),   # ample capacity: no drops
    (4, 2, 1.0, 2, 32),   # two rounds, two groups, drops
    (4, 2, 4.0, 1, 16),   # two rounds, no drops
    (8, 2, 1.25, 4, 64),
])
def test_routing_dispatch_combine_and_aux_match_numpy(experts, k, capacity_factor, groups, tokens):
    use_graph_mode()
    cell = _cell(experts, k, capacity_factor, groups, seed=tokens + k)
    cell.set_train(True)
    x = np.random.default_rng(7).normal(0, 1, (2, tokens // 2, 16)).astype(np.float32)
    y, aux = cell(ms.Tensor(x))
    expected, balance, load = numpy_moe(x.reshape(tokens, 16), *_weights(cell), k, capacity_factor, groups,
                                        training=True)
    np.testing.assert_allclose(y.asnumpy().reshape(tokens, 16), expected, atol=2e-5, rtol=1e-5)
    assert float(aux.asnumpy()) == pytest.approx(0.05 * balance, rel=1e-5, abs=1e-8)
    stats = cell.routing_stats.asnumpy()
    np.testing.assert_array_equal(stats[:experts], load)
    dropped = 1.0 - load.sum() / (k * tokens)
    assert stats[experts] == pytest.approx(dropped, abs=1e-6)
    if capacity_factor >= 4.0:
        assert dropped == 0.0
    elif (experts, k, groups) == (4, 1, 1):
        assert dropped > 0.0, "the tight-capacity case must actually drop tokens"


def test_inference_keeps_every_token():
    """Outside training the capacity is the group's token count, so no token is dropped."""
    use_graph_mode()
    cell = _cell(4, 2, 1.0, 1, seed=3)
    cell.set_train(False)
    x = np.random.default_rng(8).normal(0, 1, (1, 20, 16)).astype(np.float32)
    y, _ = cell(ms.Tensor(x))
    expected, _, load = numpy_moe(x.reshape(20, 16), *_weights(cell), 2, 1.0, 1, training=False)
    assert load.sum() == 2 * 20
    np.testing.assert_allclose(y.asnumpy().reshape(20, 16), expected, atol=2e-5, rtol=1e-5)


def test_one_expert_equals_the_dense_block():
    use_graph_mode()
    cell = _cell(1, 1, 1.0, 1, seed=5)
    cell.set_train(True)
    config = get_preset("pangu_alpha_tiny", hidden_size=16, num_heads=4, ffn_hidden_size=24, dropout_rate=0.0)
    dense = FeedForward(config, 0.02)
    dense.mapping.weight.set_data(ms.Tensor(cell.mapping.weight.asnumpy()[0]))
    dense.mapping.bias.set_data(ms.Tensor(cell.mapping.bias.asnumpy()[0, 0]))
    dense.projection.weight.set_data(ms.Tensor(cell.projection.weight.asnumpy()[0]))
    dense.projection.bias.set_data(ms.Tensor(cell.projection.bias.asnumpy()[0, 0]))
    x = ms.Tensor(np.random.default_rng(9).normal(0, 1, (2, 6, 16)).astype(np.float32))
    y, aux = cell(x)
    np.testing.assert_allclose(y.asnumpy(), dense(x).asnumpy(), atol=1e-6, rtol=1e-6)
    assert float(aux.asnumpy()) == pytest.approx(0.05)  # one expert holds everything: E^2 * 1 * 1 = 1
