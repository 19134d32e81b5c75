"""Mixture-of-experts feed-forward layer: top-k routing with capacity, dispatch, experts, combine.

The reference's MoE cells (`mindspore.parallel._transformer.MoE`, reference §8) are gone from MindSpore 2.10
and its fused MoE kernels run on Ascend only, so this layer is built from plain primitives, each an attribute
that `pangu_zoo.parallel.placement` can shard (expert parallelism is then one AllToAll each way, see
`docs/moe.md`).

Tokens [N, h] are split into G routing groups of T = N / G tokens (G = data-parallel ways when sharded, so a
group never crosses devices). Per group and for each of k rounds:

1. the router (h -> E MatMul in fp32, no bias) gives probabilities p = softmax(logits) [T, E];
2. experts chosen in earlier rounds are zeroed; each token takes the argmax expert e and its gate p[e];
3. the load-balance term E^2 * mean_e(mean_t(onehot(e)) * mean_t(q)) is added, with q the remaining
   probabilities renormalised to sum 1 per token (q = p in the first round);
4. the token's slot in expert e is the number of earlier tokens of the group that expert already holds
   (this round's earlier tokens plus every kept token of earlier rounds); a slot >= capacity C drops the
   token from that expert (its residual path is kept by the block);
5. gate * onehot(e) * onehot(slot) is added to the combine tensor [T, E, C].

C = ceil(k * T * capacity_factor / E) in training. Outside training C = T, so no token is ever dropped and
decoding with the KV cache gives the same result as recomputing the whole sequence (a token's output does
not depend on how many other tokens share its step). With k > 1 each token's combine weights are
renormalised to sum 1 over its kept experts. Dispatch is combine != 0; tokens move with batched matmuls.

The layer returns (y [N, h], aux_loss_factor * sum of the rounds' load-balance terms, averaged over groups).
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from pangu_zoo.config import ModelConfig
from pangu_zoo.models.basics import Dropout, Gelu, _cast, ms_dtype

STATS_NAME = "routing_stats"  # runtime statistics, not weights: never saved in a model directory


class ExpertLinear(nn.Cell):
    """E independent affine maps: x [E, M, in] -> [E, M, out]; weight [E, in, out], bias [E, 1, out]."""

    def __init__(self, experts: int, n_in: int, n_out: int, std: float, dtype, compute_dtype) -> None:
        super().__init__()
        self.weight = Parameter(initializer(Normal(std), [experts, n_in, n_out], dtype), name="weight")
        self.bias = Parameter(initializer("zeros", [experts, 1, n_out], dtype), name="bias")
        self.compute_dtype = compute_dtype
        self.matmul = ops.BatchMatMul()
        self.bias_add = ops.Add()

    def construct(self, x):
        y = self.matmul(_cast(x, self.compute_dtype), _cast(self.weight, self.compute_dtype))
        return self.bias_add(y, _cast(self.bias, self.compute_dtype))


class Router(nn.Cell):
    """Token -> expert probabilities: an h -> E MatMul in fp32 without bias, then softmax."""

    def __init__(self, hidden: int, experts: int, std: float) -> None:
        super().__init__()
        self.weight = Parameter(initializer(Normal(std), [hidden, experts], ms.float32), name="weight")
        self.matmul = ops.MatMul()
        self.softmax = ops.Softmax(axis=-1)

    def construct(self, tokens, groups: int):
        """tokens [N, h] -> probabilities [G, T, E] in fp32."""
        logits = self.matmul(_cast(tokens, ms.float32), self.weight)
        return self.softmax(logits.reshape(groups, -1, logits.shape[-1]))


class MixtureOfExperts(nn.Cell):
    """The MoE FFN of one block; same call as `FeedForward` but returns (y, aux_loss)."""

    def __init__(self, config: ModelConfig, out_std: float) -> None:
        super().__init__()
        moe = config.moe
        dtype, cdt = ms_dtype(config.param_dtype), ms_dtype(config.compute_dtype)
        h, f, e = config.hidden_size, config.ffn_hidden_size, moe.expert_num
        self.experts, self.chosen = e, moe.num_experts_chosen
        self.capacity_factor, self.aux_loss_factor = moe.capacity_factor, moe.aux_loss_factor
        self.compute_dtype = cdt
        self.router = Router(h, e, config.initializer_range)
        self.mapping = ExpertLinear(e, h, f, config.initializer_range, dtype, cdt)
        self.projection = ExpertLinear(e, f, h, out_std, dtype, cdt)
        self.activation = Gelu(config.hidden_act == "fast_gelu", cdt)
        self.dropout = Dropout(config.dropout_rate)
        # placement sets these for a sharded plan: routing groups (= dp) and expert-parallel ways
        self.groups, self.expert_parallel = 1, 1
        # [tokens kept per expert (E), share of (token, round) picks dropped, load-balance term]; written on
        # every training step so the trainer can log the routing (off under sharded plans)
        self.record_stats = True
        self.routing_stats = Parameter(initializer("zeros", [e + 2], ms.float32), name=STATS_NAME,
                                       requires_grad=False)
        # routing, on [G, T, E] / [G, T] / [G, T, E, C] tensors (all split by group when sharded)
        self.not_chosen = ops.Sub()
        self.remaining_mul = ops.Mul()
        self.remaining_sum = ops.ReduceSum(keep_dims=True)
        self.remaining_div = ops.RealDiv()
        self.argmax = ops.ArgMaxWithValue(axis=-1)
        self.expert_onehot = ops.OneHot()
        self.density_mean = ops.ReduceMean()
        self.proxy_mean = ops.ReduceMean()
        self.balance_mul = ops.Mul()
        self.balance_mean = ops.ReduceMean()
        self.balance_add = ops.Add()
        self.chosen_add = ops.Add()
        self.slot_cumsum = ops.CumSum(exclusive=True)
        self.slot_offset_add = ops.Add()
        self.slot_pick_mul = ops.Mul()
        self.slot_pick_sum = ops.ReduceSum()
        self.keep_less = ops.Less()
        self.keep_cast = ops.Cast()
        self.gate_keep_mul = ops.Mul()
        self.kept_mul = ops.Mul()
        self.kept_count = ops.ReduceSum(keep_dims=True)
        self.held_add = ops.Add()
        self.slot_clip = ops.Minimum()
        self.slot_index_cast = ops.Cast()
        self.slot_onehot = ops.OneHot()
        self.gate_expert_mul = ops.Mul()
        self.combine_mul = ops.Mul()
        self.combine_add = ops.Add()
        self.combine_sum = ops.ReduceSum(keep_dims=True)
        self.combine_eps_add = ops.Add()
        self.combine_div = ops.RealDiv()
        self.dispatch_ne = ops.NotEqual()
        self.dispatch_cast = ops.Cast()
        # token movement: [G, T, E*C]^T x [G, T, h] -> [G, E*C, h], and back
        self.dispatch_matmul = ops.BatchMatMul(transpose_a=True)
        self.to_experts = ops.Transpose()
        self.from_experts = ops.Transpose()
        self.combine_matmul = ops.BatchMatMul()
        self.on = ms.Tensor(1.0, ms.float32)
        self.off = ms.Tensor(0.0, ms.float32)

    def capacity(self, tokens_per_group: int) -> int:
        if not self.training:
            return tokens_per_group
        return math.ceil(self.chosen * tokens_per_group * self.capacity_factor / self.experts)

    def route(self, probs, capacity: int):
        """probs [G, T, E] -> (combine [G, T, E, C] fp32, sum over rounds of mean_e(density * proxy) (the
        load-balance term without its E^2), kept picks per expert [G, 1, E])."""
        g, t, e = probs.shape
        chosen = held = combine = None  # experts picked so far [G, T, E]; kept tokens per expert [G, 1, E]
        balance = None
        for _ in range(self.chosen):
            remaining = probs if chosen is None else self.remaining_mul(probs, self.not_chosen(self.on, chosen))
            expert, gate = self.argmax(remaining)  # [G, T] each; gate is the unrenormalised probability
            onehot = self.expert_onehot(expert, e, self.on, self.off)  # [G, T, E]
            proxy = self.remaining_div(remaining, self.remaining_sum(remaining, -1))
            density = self.density_mean(onehot, 1)  # [G, E]
            term = self.balance_mean(self.balance_mul(density, self.proxy_mean(proxy, 1)))
            balance = term if balance is None else self.balance_add(balance, term)
            chosen = onehot if chosen is None else self.chosen_add(chosen, onehot)
            slots = self.slot_cumsum(onehot, 1)  # this round's earlier tokens of the same expert
            if held is not None:
                slots = self.slot_offset_add(slots, held)
            slot = self.slot_pick_sum(self.slot_pick_mul(slots, onehot), -1)  # [G, T]
            keep = self.keep_cast(self.keep_less(slot, float(capacity)), ms.float32)
            kept = self.kept_mul(onehot, keep.reshape(g, t, 1))
            counted = self.kept_count(kept, 1)
            held = counted if held is None else self.held_add(held, counted)
            slot_index = self.slot_index_cast(self.slot_clip(slot, float(capacity - 1)), ms.int32)
            slot_hot = self.slot_onehot(slot_index, capacity, self.on, self.off)  # [G, T, C]
            weighted = self.gate_expert_mul(kept, self.gate_keep_mul(gate, keep).reshape(g, t, 1))  # [G, T, E]
            term = self.combine_mul(weighted.reshape(g, t, e, 1), slot_hot.reshape(g, t, 1, capacity))
            combine = term if combine is None else self.combine_add(combine, term)
        if self.chosen > 1:
            total = self.combine_eps_add(self.combine_sum(combine, (2, 3)), 1e-9)  # [G, T, 1, 1]
            combine = self.combine_div(combine, total)
        return combine, balance, held

    def construct(self, x):
        """x [..., h] -> (y [..., h], aux loss scalar fp32)."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        g, h, e = self.groups, shape[-1], self.experts
        t = tokens.shape[0] // g
        capacity = self.capacity(t)
        probs = self.router(tokens, g)
        combine, balance, held = self.route(probs, capacity)
        combine = combine.reshape(g, t, e * capacity)
        dispatch = self.dispatch_cast(self.dispatch_ne(combine, 0.0), self.compute_dtype)
        grouped = _cast(tokens, self.compute_dtype).reshape(g, t, h)
        expert_in = self.dispatch_matmul(dispatch, grouped)  # [G, E*C, h]
        # [G, E, C, h] -> [E, G*C, h], with G factored as (ep, G/ep): one AllToAll over the ep group when sharded
        ep, r = self.expert_parallel, g // self.expert_parallel
        expert_in = self.to_experts(expert_in.reshape(ep, r, e, capacity, h), (2, 1, 0, 3, 4))
        hidden = self.activation(self.mapping(expert_in.reshape(e, g * capacity, h)))
        expert_out = self.projection(hidden).reshape(e, r, ep, capacity, h)
        expert_out = self.from_experts(expert_out, (2, 1, 0, 3, 4)).reshape(g, e * capacity, h)
        y = self.combine_matmul(_cast(combine, self.compute_dtype), expert_out)  # [G, T, h]
        y = self.dropout(y.reshape(shape))
        # [1], not a 0-d scalar: a 0-d tensor sent between pipeline stages arrives as a Python scalar
        aux = (balance * (self.aux_loss_factor * e * e)).reshape(1)
        if self.training and self.record_stats:
            picks = float(self.chosen * g * t)
            load = held.reshape(g, e).sum(0)
            dropped = 1.0 - load.sum() / picks
            stats = ops.concat((load, dropped.reshape(1), aux.reshape(1)))
            y = ops.depend(y, ops.assign(self.routing_stats, stats))
        return y, aux


def routing_statistics(model) -> dict | None:
    """The routing of the last training step over every MoE layer: tokens per expert (summed over layers), the
    share of dropped (token, round) picks and the load-balance loss (both averaged over layers); None for dense
    models."""
    stats = [cell.routing_stats.asnumpy() for _, cell in model.cells_and_names()
             if isinstance(cell, MixtureOfExperts)]
    if not stats:
        return None
    values = np.stack(stats)
    return {"expert_load": values[:, :-2].sum(0).astype(int).tolist(),
            "dropped_share": float(values[:, -2].mean()), "aux_loss": float(values[:, -1].sum())}
