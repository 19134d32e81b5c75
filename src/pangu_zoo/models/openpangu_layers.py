"""openPangu-Embedded's decoder (formats.md §6.2): a Llama-style stack under the names of its Hugging Face files.

    x = embed_tokens(ids)
    each layer:  x = x + o_proj(attention(rope(q_proj(a)), rope(k_proj(a)), v_proj(a)))   with a = RMSNorm(x)
                 x = x + down_proj(silu(gate_proj(m)) * up_proj(m))                        with m = RMSNorm(x)
    logits = lm_head(RMSNorm(x))   (the word table itself when tie_word_embeddings)

`OpenPanguBackbone` holds Hugging Face's `model` and `lm_head`, so every parameter keeps its Hugging Face name after
the backbone's prefix (`backbone.model.layers.3.self_attn.q_proj.weight`); weights are [out, in] as torch stores
them. Query/key/value/output projections carry biases when `config.bias` (the MLP never does).

Grouped-query attention: `num_key_value_heads` key/value heads each serve `g = heads / kv` query heads (query
head i uses key/value head i // g, Hugging Face's `repeat_kv`). Keys and values are never repeated: the queries
of one group are viewed together as [B, kv, g*S, d], and the KV cache holds the kv heads only.

Rotary embeddings use the rotate-half layout: channel c and c + d/2 form a pair turned by position x
theta^(-2c/d). The angles are computed in fp32 from the position ids as Hugging Face computes them (one product,
then cos and sin), so any position works and nothing is tabled. Numerics otherwise follow `layers.py`: RMSNorm and
softmax in fp32, matmuls in compute_dtype, the residual stream in fp32, masks as additive biases. Every op a
plan shards is a primitive attribute, for `pangu_zoo.parallel.placement`.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from pangu_zoo.config import OpenPanguConfig
from pangu_zoo.models.basics import Dropout, _cast, ms_dtype
from pangu_zoo.models.layers import Linear, LMHead


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2i/d) for i < d/2 ([d/2] fp32), computed in fp32 as Hugging Face's default rotary embedding does."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)


class TokenEmbedding(nn.Cell):
    """The word table [vocab, h] named `weight` (Hugging Face's `embed_tokens.weight`); fp32 whatever param_dtype
    says, as the other families' tables (MindSpore's CPU Gather has no bf16 kernel)."""

    def __init__(self, rows: int, hidden: int, std: float) -> None:
        super().__init__()
        self.weight = Parameter(initializer(Normal(std), [rows, hidden], ms.float32), name="weight")
        self.gather = ops.Gather()

    def construct(self, ids):
        return self.gather(self.weight, ids, 0)


class RMSNorm(nn.Cell):
    """x * rsqrt(mean(x²) + eps) * weight over the last axis, in fp32 (-> fp32)."""

    def __init__(self, hidden: int, eps: float, dtype) -> None:
        super().__init__()
        self.weight = Parameter(initializer("ones", [hidden], dtype), name="weight")
        self.eps = ms.Tensor(eps, ms.float32)
        self.square = ops.Square()
        self.mean = ops.ReduceMean(keep_dims=True)
        self.add_eps = ops.Add()
        self.rsqrt = ops.Rsqrt()
        self.normalize = ops.Mul()
        self.scale = ops.Mul()

    def construct(self, x):
        x = _cast(x, ms.float32)
        inverse_rms = self.rsqrt(self.add_eps(self.mean(self.square(x), -1), self.eps))
        return self.scale(self.normalize(x, inverse_rms), _cast(self.weight, ms.float32))


class RotaryAngles(nn.Cell):
    """cos and sin [B, 1, S, d] (fp32) of the rotary angles of position ids [B, S]: each position times the d/2
    frequencies, written twice (rotate-half layout)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        frequencies = inverse_frequencies(head_dim, theta)
        self.frequencies = ms.Tensor(np.concatenate([frequencies, frequencies]))
        self.position_cast = ops.Cast()
        self.angle_mul = ops.Mul()
        self.cos = ops.Cos()
        self.sin = ops.Sin()

    def construct(self, position_ids):
        batch, seq = position_ids.shape
        positions = self.position_cast(position_ids, ms.float32).reshape(batch, 1, seq, 1)
        angles = self.angle_mul(positions, self.frequencies)
        return self.cos(angles), self.sin(angles)


class ApplyRotary(nn.Cell):
    """x * cos + rotate_half(x) * sin for x [B, heads, S, d], where rotate_half(x) = [-x[d/2:], x[:d/2]]."""

    def __init__(self) -> None:
        super().__init__()
        self.split = ops.Split(axis=-1, output_num=2)
        self.neg = ops.Neg()
        self.concat = ops.Concat(axis=-1)
        self.cos_mul = ops.Mul()
        self.sin_mul = ops.Mul()
        self.add = ops.Add()

    def construct(self, x, cos, sin):
        first, second = self.split(x)
        rotated = self.concat((self.neg(second), first))
        return self.add(self.cos_mul(x, cos), self.sin_mul(rotated, sin))


class GroupedQueryAttention(nn.Cell):
    """Causal self-attention with `num_key_value_heads` shared key/value heads and rotary positions.

    `construct` attends over the keys of its input; `step` writes one new key/value per row into a fixed-size
    cache at `slot` and attends over the cache. Both return the key/value tensors [B, kv, T, d] (keys rotated), so
    callers keep the cache as explicit state, as `layers.Attention` does.
    """

    def __init__(self, config: OpenPanguConfig) -> None:
        super().__init__()
        dtype, cdt = ms_dtype(config.param_dtype), ms_dtype(config.compute_dtype)
        h, std = config.hidden_size, config.initializer_range
        n, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_proj = Linear(h, n * d, std, dtype, cdt, weight_out_in=True, bias=config.bias)
        self.k_proj = Linear(h, kv * d, std, dtype, cdt, weight_out_in=True, bias=config.bias)
        self.v_proj = Linear(h, kv * d, std, dtype, cdt, weight_out_in=True, bias=config.bias)
        self.o_proj = Linear(n * d, h, std, dtype, cdt, weight_out_in=True, bias=config.bias)
        self.num_heads, self.num_kv_heads, self.head_dim = n, kv, d
        self.group = n // kv
        self.scale = ms.Tensor(d ** -0.5, cdt)  # applied to q before q·kᵀ (fp16 scores would overflow otherwise)
        self.compute_dtype = cdt
        self.rotary = ApplyRotary()
        self.split_heads = ops.Transpose()
        self.scale_mul = ops.Mul()
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.mask_add = ops.Add()
        self.softmax = ops.Softmax(axis=-1)
        self.prob_dropout = Dropout(config.attention_dropout)
        self.context_matmul = ops.BatchMatMul()
        self.merge_heads = ops.Transpose()
        self.dropout = Dropout(config.dropout_rate)
        # the cache write as layers.Attention does it: a broadcasting select on one device, arithmetic when sharded
        self.sharded_cache_write = False
        self.cache_keep_mul = ops.Mul()
        self.cache_new_mul = ops.Mul()
        self.cache_add = ops.Add()

    def _heads(self, x, heads: int):
        b, s, _ = x.shape
        return self.split_heads(x.reshape(b, s, heads, self.head_dim), (0, 2, 1, 3))

    def _context(self, q, k, v, bias):
        """q [B, n, S, d] (rotated and scaled), k and v [B, kv, T, d], bias [B, 1, S, T] -> context [B, n, S, d].
        The g query heads of each key/value head are read as one [g*S, d] block of its batch entry."""
        b, n, s, d = q.shape
        t = k.shape[2]
        grouped = q.reshape(b, self.num_kv_heads, self.group * s, d)
        scores = _cast(self.scores_matmul(grouped, k), ms.float32).reshape(b, n, s, t)
        probs = self.prob_dropout(self.softmax(self.mask_add(bias, scores)))
        probs = _cast(probs, self.compute_dtype).reshape(b, self.num_kv_heads, self.group * s, t)
        return self.context_matmul(probs, v).reshape(b, n, s, d)

    def _query(self, q, cos, sin):
        return self.scale_mul(self.rotary(q, cos, sin), self.scale)

    def construct(self, x, cos, sin, bias):
        """x [B, S, h] in compute dtype, cos/sin [B, 1, S, d], bias [B, 1, S, S] ->
        (out [B, S, h], k, v [B, kv, S, d])."""
        cdt = self.compute_dtype
        cos, sin = _cast(cos, cdt), _cast(sin, cdt)
        q = self._query(self._heads(self.q_proj(x), self.num_heads), cos, sin)
        k = self.rotary(self._heads(self.k_proj(x), self.num_kv_heads), cos, sin)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        ctx = self._context(q, k, v, bias)
        b, n, s, d = ctx.shape
        out = self.o_proj(self.merge_heads(ctx, (0, 2, 1, 3)).reshape(b, s, n * d))
        return self.dropout(out), k, v

    def _write(self, cache, new, slot):
        """cache [B, kv, T, d] with new [B, kv, 1, d] written where slot [B, 1, T, 1] (bool) is true."""
        new = _cast(new, cache.dtype)
        if not self.sharded_cache_write:
            return ops.where(slot, new, cache)
        slot = _cast(slot, cache.dtype)
        return self.cache_add(self.cache_keep_mul(cache, 1 - slot), self.cache_new_mul(new, slot))

    def step(self, x, cos, sin, bias, slot, k_cache, v_cache):
        """One new position per row: x [B, 1, h]; cos/sin [B, 1, 1, d]; bias [B, 1, 1, T]; slot [B, 1, T, 1] bool;
        caches [B, kv, T, d]. With one position, [B, 1, heads*d] and [B, heads, 1, d] hold the same values."""
        cdt = self.compute_dtype
        cos, sin = _cast(cos, cdt), _cast(sin, cdt)
        b, n, kv, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q = self._query(self.q_proj(x).reshape(b, n, 1, d), cos, sin)
        k_cache = self._write(k_cache, self.rotary(self.k_proj(x).reshape(b, kv, 1, d), cos, sin), slot)
        v_cache = self._write(v_cache, self.v_proj(x).reshape(b, kv, 1, d), slot)
        ctx = self._context(q, _cast(k_cache, cdt), _cast(v_cache, cdt), bias)
        return self.dropout(self.o_proj(ctx.reshape(b, 1, n * d))), k_cache, v_cache


class GatedMLP(nn.Cell):
    """down_proj(silu(gate_proj(x)) * up_proj(x)) without biases (SwiGLU), then dropout."""

    def __init__(self, config: OpenPanguConfig) -> None:
        super().__init__()
        dtype, cdt = ms_dtype(config.param_dtype), ms_dtype(config.compute_dtype)
        h, f, std = config.hidden_size, config.intermediate_size, config.initializer_range
        self.gate_proj = Linear(h, f, std, dtype, cdt, weight_out_in=True, bias=False)
        self.up_proj = Linear(h, f, std, dtype, cdt, weight_out_in=True, bias=False)
        self.down_proj = Linear(f, h, std, dtype, cdt, weight_out_in=True, bias=False)
        self.sigmoid = ops.Sigmoid()
        self.silu_mul = ops.Mul()  # silu(g) = g * sigmoid(g)
        self.gate_mul = ops.Mul()
        self.dropout = Dropout(config.dropout_rate)

    def construct(self, x):
        """x [..., h]; the MLP works on tokens [N, h] (the layout its shard strategies describe)."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        gate = self.gate_proj(tokens)
        hidden = self.gate_mul(self.silu_mul(gate, self.sigmoid(gate)), self.up_proj(tokens))
        return self.dropout(self.down_proj(hidden)).reshape(shape)


class DecoderLayer(nn.Cell):
    """x + attention(RMSNorm(x)), then x + MLP(RMSNorm(x)) (Hugging Face's PanguEmbeddedDecoderLayer)."""

    def __init__(self, config: OpenPanguConfig) -> None:
        super().__init__()
        dtype = ms_dtype(config.param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = GroupedQueryAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = GatedMLP(config)
        self.compute_dtype = ms_dtype(config.compute_dtype)
        self.residual_add = ops.Add()

    def _mlp_residual(self, x):
        return self.residual_add(x, _cast(self.mlp(_cast(self.post_attention_layernorm(x), self.compute_dtype)),
                                          x.dtype))

    def construct(self, x, cos, sin, bias):
        """x [B, S, h] fp32 -> (x', k, v)."""
        attn, k, v = self.self_attn(_cast(self.input_layernorm(x), self.compute_dtype), cos, sin, bias)
        return self._mlp_residual(self.residual_add(x, _cast(attn, x.dtype))), k, v

    def step(self, x, cos, sin, bias, slot, k_cache, v_cache):
        attn, k_cache, v_cache = self.self_attn.step(_cast(self.input_layernorm(x), self.compute_dtype), cos, sin,
                                                     bias, slot, k_cache, v_cache)
        return self._mlp_residual(self.residual_add(x, _cast(attn, x.dtype))), k_cache, v_cache


class PanguEmbeddedModel(nn.Cell):
    """Hugging Face's base model: embed_tokens -> layers -> norm, giving hidden states (fp32)."""

    def __init__(self, config: OpenPanguConfig) -> None:
        super().__init__()
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size, config.initializer_range)
        self.rotary = RotaryAngles(config.head_dim, config.rope_theta)
        self.layers = nn.CellList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ms_dtype(config.param_dtype))

    def construct(self, input_ids, position_ids, bias):
        """input_ids, position_ids [B, S] int32; bias [B, 1, S, S] fp32 -> hidden [B, S, h] fp32."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids)
        for layer in self.layers:
            x, _, _ = layer(x, cos, sin, bias)
        return self.norm(x)

    def prefill(self, input_ids, position_ids, bias):
        """As `construct`, also returning keys/values: tuples with one [B, kv, S, d] tensor per layer."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids)
        keys, values = (), ()
        for layer in self.layers:
            x, k, v = layer(x, cos, sin, bias)
            keys, values = keys + (k,), values + (v,)
        return self.norm(x), keys, values

    def step(self, input_ids, position_ids, bias, slot, keys, values):
        """One token per row: input_ids, position_ids [B, 1]; bias [B, 1, 1, T]; slot [B, 1, T, 1] bool; keys/values:
        tuples of [B, kv, T, d] -> (hidden [B, 1, h], new keys, new values)."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids)
        new_keys, new_values = (), ()
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, cos, sin, bias, slot, keys[i], values[i])
            new_keys, new_values = new_keys + (k,), new_values + (v,)
        return self.norm(x), new_keys, new_values


class OpenPanguBackbone(nn.Cell):
    """Hugging Face's `model` and `lm_head` behind the backbone interface the graphs (`models/graphs.py`), the
    decoding loop and the loss use: `construct`, `hidden_and_aux`, `prefill`, `step`, `logits`, `num_layers`."""

    def __init__(self, config: OpenPanguConfig) -> None:
        super().__init__()
        cdt = ms_dtype(config.compute_dtype)
        self.model = PanguEmbeddedModel(config)
        self.tied = config.tie_word_embeddings
        if self.tied:  # the head is the word table, as in the other families
            self.head = LMHead(cdt)
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, config.initializer_range,
                                  ms_dtype(config.param_dtype), cdt, weight_out_in=True, bias=False)
        self.num_layers = config.num_hidden_layers
        self.has_top_query = False
        self.moe = False

    def construct(self, input_ids, position_ids, bias):
        return self.model(input_ids, position_ids, bias)

    def hidden_and_aux(self, input_ids, position_ids, bias):
        """As `construct`, with no auxiliary loss (a dense model)."""
        return self.model(input_ids, position_ids, bias), None

    def prefill(self, input_ids, position_ids, bias):
        return self.model.prefill(input_ids, position_ids, bias)

    def step(self, input_ids, position_ids, bias, slot, keys, values):
        return self.model.step(input_ids, position_ids, bias, slot, keys, values)

    def logits(self, hidden):
        """hidden [..., h] -> logits [..., vocab] in fp32."""
        if self.tied:
            return self.head(hidden, self.model.embed_tokens.weight)
        return _cast(self.lm_head(hidden), ms.float32)
