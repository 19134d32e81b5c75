"""The one transformer both families share: embeddings, pre-LN blocks, final LayerNorm, tied head.

Parameter names and orientation follow the released PanGu-alpha checkpoints:
`attention.dense1/2/3.weight` (query/key/value) are stored [out, in]; `attention.projection.weight`,
`output.mapping.weight` and `output.projection.weight` are stored [in, out].

Every op that a parallel plan shards is a primitive held as an attribute (`self.gather`,
`self.matmul`, `self.softmax`, ...), so `pangu_zoo.parallel.placement` can give it a strategy without this
module knowing about devices. Standalone, strategies are inert.

Numerics: parameters may be fp32/fp16/bf16; matmuls run in `compute_dtype`; LayerNorm, softmax and
the loss run in fp32. Masks are additive biases in fp32 (0 = attend, -10000 = blocked), as in the
reference. Shapes use B = batch, S = query length, T = key length, n = heads, d = head size.
"""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, initializer

from pangu_zoo.config import ModelConfig
from pangu_zoo.models.basics import Dropout, Gelu, _cast, ms_dtype
from pangu_zoo.models.moe import MixtureOfExperts


class Embedding(nn.Cell):
    """Lookup table [rows, hidden] named `embedding_table` (the released name)."""

    def __init__(self, rows: int, hidden: int, init, dtype) -> None:
        super().__init__()
        self.embedding_table = Parameter(initializer(init, [rows, hidden], dtype), name="embedding_table")
        self.gather = ops.Gather()

    def construct(self, ids):
        return self.gather(self.embedding_table, ids, 0)


class EmbeddingSum(nn.Cell):
    """word + position embeddings (fp32), then dropout. Holds no parameters, so names are unchanged."""

    def __init__(self, dropout_rate: float) -> None:
        super().__init__()
        self.add = ops.Add()
        self.dropout = Dropout(dropout_rate)

    def construct(self, words, positions):
        return self.dropout(self.add(_cast(words, ms.float32), _cast(positions, ms.float32)))


class LMHead(nn.Cell):
    """Tied head: hidden [..., h] @ table[V, h]^T -> logits [..., V] in fp32. The table is an argument
    (it belongs to the word embedding), so this cell can sit on another pipeline stage."""

    def __init__(self, compute_dtype) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, hidden, table):
        table = _cast(table, self.compute_dtype)
        shape = hidden.shape
        flat = _cast(hidden, self.compute_dtype).reshape(-1, shape[-1])
        out = self.matmul(flat, table)
        return _cast(out, ms.float32).reshape(shape[:-1] + (-1,))  # -1: the table may be a sliced parameter


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis, always computed in fp32; parameters `gamma` and `beta`."""

    def __init__(self, hidden: int, eps: float, dtype) -> None:
        super().__init__()
        self.gamma = Parameter(initializer("ones", [hidden], dtype), name="gamma")
        self.beta = Parameter(initializer("zeros", [hidden], dtype), name="beta")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        y, _, _ = self.norm(_cast(x, ms.float32), _cast(self.gamma, ms.float32), _cast(self.beta, ms.float32))
        return y


class Linear(nn.Cell):
    """Affine map, with a bias unless `bias=False`. `weight_out_in=True` stores the weight [out, in] (torch
    layout), else [in, out].

    `lora`, when set (`pangu_zoo.models.lora.apply_lora`), is a low-rank adapter cell whose update is added to
    the output: `lora(x, y)` for tokens x [N, in] and y [N, out]."""

    def __init__(self, n_in: int, n_out: int, std: float, dtype, compute_dtype, weight_out_in: bool,
                 bias: bool = True) -> None:
        super().__init__()
        shape = [n_out, n_in] if weight_out_in else [n_in, n_out]
        self.weight = Parameter(initializer(Normal(std), shape, dtype), name="weight")
        self.has_bias = bias
        if bias:
            self.bias = Parameter(initializer("zeros", [n_out], dtype), name="bias")
            self.bias_add = ops.BiasAdd()  # on CPU a third of the broadcasting Add's time
        self.compute_dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=weight_out_in)
        self.n_out = n_out
        self.weight_out_in = weight_out_in
        self.lora = None

    def _affine(self, x2):
        y = self.matmul(_cast(x2, self.compute_dtype), _cast(self.weight, self.compute_dtype))
        if self.has_bias:
            y = self.bias_add(y, _cast(self.bias, self.compute_dtype))
        return y if self.lora is None else self.lora(x2, y)

    def construct(self, x):
        if x.ndim == 2:  # already tokens [N, in]: no reshapes
            return self._affine(x)
        shape = x.shape
        return self._affine(x.reshape(-1, shape[-1])).reshape(shape[:-1] + (self.n_out,))


class FeedForward(nn.Cell):
    """`projection(act(mapping(x)))` with tanh-GELU (or fast_gelu) and output dropout."""

    def __init__(self, config: ModelConfig, out_std: float) -> None:
        super().__init__()
        dtype, cdt = ms_dtype(config.param_dtype), ms_dtype(config.compute_dtype)
        std = config.initializer_range
        self.mapping = Linear(config.hidden_size, config.ffn_hidden_size, std, dtype, cdt, weight_out_in=False)
        self.projection = Linear(config.ffn_hidden_size, config.hidden_size, out_std, dtype, cdt,
                                 weight_out_in=False)
        # tanh-GELU, the approximation GPT-2 and PanGu-alpha use (or fast_gelu)
        self.activation = Gelu(config.hidden_act == "fast_gelu", cdt)
        self.dropout = Dropout(config.dropout_rate)

    def construct(self, x):
        """x [..., h]; the FFN itself works on tokens [N, h] (the layout its shard strategies describe)."""
        shape = x.shape
        h = self.activation(self.mapping(x.reshape(-1, shape[-1])))
        return self.dropout(self.projection(h)).reshape(shape)


class Attention(nn.Cell):
    """Multi-head attention whose query may come from a different tensor than key/value.

    `construct` attends over the keys of the current input; `step` writes this step's key/value into a
    fixed-size cache at `slot` and attends over the cache. Both return the updated key/value tensors
    [B, n, T, d] so callers can keep the cache as explicit state.
    """

    def __init__(self, config: ModelConfig, out_std: float) -> None:
        super().__init__()
        dtype, cdt = ms_dtype(config.param_dtype), ms_dtype(config.compute_dtype)
        h, std = config.hidden_size, config.initializer_range
        self.dense1 = Linear(h, h, std, dtype, cdt, weight_out_in=True)
        self.dense2 = Linear(h, h, std, dtype, cdt, weight_out_in=True)
        self.dense3 = Linear(h, h, std, dtype, cdt, weight_out_in=True)
        self.projection = Linear(h, h, out_std, dtype, cdt, weight_out_in=False)
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        # q and k are each scaled by d^-1/4 before q·kᵀ (the reference's order): unscaled, q·kᵀ of
        # activations at 2.6B scale exceeds the fp16 range (65504) before any 1/sqrt(d) could help
        self.qk_scale = ms.Tensor(config.head_dim ** -0.25, cdt)
        self.compute_dtype = cdt
        self.prob_dropout = Dropout(config.dropout_rate)
        self.dropout = Dropout(config.dropout_rate)
        self.split_heads = ops.Transpose()
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.scale_mul = ops.Mul()
        self.mask_add = ops.Add()
        self.softmax = ops.Softmax(axis=-1)
        self.context_matmul = ops.BatchMatMul()
        self.merge_heads = ops.Transpose()
        # Sharded, the cache write is arithmetic, cache * (1 - slot) + new * slot (exact for a 0/1 slot), because
        # the parallel Select needs equal input shapes. One device keeps the broadcasting select, which is faster
        # on CPU (35 vs 46 ms per GPT-2 token). Placement sets the flag.
        self.sharded_cache_write = False
        self.cache_keep_mul = ops.Mul()
        self.cache_new_mul = ops.Mul()
        self.cache_add = ops.Add()

    def _heads(self, x):
        """[B, S, n*d] -> [B, n, S, d]."""
        b, s, _ = x.shape
        return self.split_heads(x.reshape(b, s, self.num_heads, self.head_dim), (0, 2, 1, 3))

    def _merge(self, ctx):
        """[B, n, S, d] -> [B, S, n*d], the inverse of `_heads`."""
        b, n, s, d = ctx.shape
        return self.merge_heads(ctx, (0, 2, 1, 3)).reshape(b, s, n * d)

    def _step_heads(self, x):
        """`_heads` for the cache graphs, whose S is static: with one position ([B, 1, n*d] and [B, n, 1, d] hold
        the same values in the same order) a reshape, no transpose."""
        b, s, _ = x.shape
        return x.reshape(b, self.num_heads, 1, self.head_dim) if s == 1 else self._heads(x)

    def _step_merge(self, ctx):
        b, n, s, d = ctx.shape
        return ctx.reshape(b, 1, n * d) if s == 1 else self._merge(ctx)

    def _scale(self, x):
        """x * d^-1/4 for a query or key [B, n, S, d]; q·kᵀ of two scaled tensors is q·kᵀ/sqrt(d)."""
        return self.scale_mul(x, self.qk_scale)

    def _scores(self, q, k):
        """Scaled q [B, n, S, d] and k [B, n, T, d] -> scores [B, n, S, T] in fp32."""
        return _cast(self.scores_matmul(q, k), ms.float32)

    def _context(self, q, k, v, bias):
        """Scaled q [B, n, S, d], scaled k and v [B, n, T, d], bias [B, 1, S, T] -> context [B, n, S, d]."""
        scores = self._scores(q, k)
        probs = self.prob_dropout(self.softmax(self.mask_add(bias, scores)))
        return self.context_matmul(_cast(probs, self.compute_dtype), v)

    def _attend(self, q, k, v, bias):
        return self.dropout(self.projection(self._merge(self._context(q, k, v, bias))))

    def construct(self, query_input, kv_input, bias):
        """query_input, kv_input [B, S, h]; bias [B, 1, S, S] fp32 -> (out [B, S, h], k, v [B, n, S, d]).
        The returned keys are already scaled by d^-1/4, so a cache of them is never rescaled."""
        q = self._scale(self._heads(self.dense1(query_input)))
        k = self._scale(self._heads(self.dense2(kv_input)))
        v = self._heads(self.dense3(kv_input))
        return self._attend(q, k, v, bias), k, v

    def _write(self, cache, new, where):
        """cache [B, n, T, d] with new [B, n, S, d] written into the slots `where` names: a 0/1 mask [B, 1, T, 1]
        (bool; S = 1) or a scatter index [B, n, S, 3] (int32; (row, head, slot) of each new position)."""
        new = _cast(new, cache.dtype)
        if where.dtype != ms.bool_:
            # one device only, like the select below (the "decode" graph of exported models): the scatter copies the
            # cache once and sets the new rows, where the select reads the cache, a broadcast of the new rows and
            # the mask (three times the time on GPT-2 small at batch 8, cache 576)
            return ops.tensor_scatter_update(cache, where, new)
        if not self.sharded_cache_write:
            return ops.where(where, new, cache)
        slot = _cast(where, cache.dtype)
        return self.cache_add(self.cache_keep_mul(cache, 1 - slot), self.cache_new_mul(new, slot))

    def step(self, query_input, kv_input, bias, where, k_cache, v_cache):
        """S new positions per row (one when decoding, a prompt chunk when prefilling in chunks): inputs [B, S, h];
        caches [B, n, T, d]; `where`: the cache slots they take (see `_write`), or None.

        With `where`, their keys and values are written into the caches, then they attend over the caches (bias
        [B, 1, S, T]); returns the updated caches. With None the caches are only read: the new positions attend
        over the cached slots and over each other (bias [B, 1, S, T + S], the cache's slots first), and only their
        own keys and values [B, n, S, d] are returned, for the caller to store. Writing into a graph input copies
        it: for GPT-2 small at batch 8 and cache 576, 340 MB per step."""
        q = self._scale(self._step_heads(self.dense1(query_input)))
        k_new = self._scale(self._step_heads(self.dense2(kv_input)))
        v_new = self._step_heads(self.dense3(kv_input))
        if where is None:
            ctx = self._context_beside(q, k_cache, v_cache, k_new, v_new, bias)
            k_cache, v_cache = _cast(k_new, k_cache.dtype), _cast(v_new, v_cache.dtype)
        else:
            k_cache, v_cache = self._write(k_cache, k_new, where), self._write(v_cache, v_new, where)
            ctx = self._context(q, _cast(k_cache, self.compute_dtype), _cast(v_cache, self.compute_dtype), bias)
        return self.dropout(self.projection(self._step_merge(ctx))), k_cache, v_cache

    def _context_beside(self, q, k_cache, v_cache, k_new, v_new, bias):
        """Scaled q, k_new and v_new [B, n, S, d], the scaled cache [B, n, T, d], bias [B, 1, S, T + S] -> context
        [B, n, S, d]: one softmax over the cached and the new keys, whose weights are split between the values."""
        cached = k_cache.shape[2]
        scores = ops.concat((self._scores(q, _cast(k_cache, self.compute_dtype)), self._scores(q, k_new)), axis=-1)
        probs = _cast(self.prob_dropout(self.softmax(self.mask_add(bias, scores))), self.compute_dtype)
        return self.context_matmul(probs[:, :, :, :cached], _cast(v_cache, self.compute_dtype)) + \
            self.context_matmul(probs[:, :, :, cached:], v_new)


class Block(nn.Cell):
    """Pre-LN transformer layer: x + attn(LN1(x)), then x + FFN(LN2(x)).

    With `query` given (the PanGu-alpha top-query layer) the attention query is `query` itself (not
    layer-normed) while key and value come from LN1(x).
    """

    def __init__(self, config: ModelConfig, dense: bool = False) -> None:
        super().__init__()
        dtype = ms_dtype(config.param_dtype)
        out_std = config.initializer_range / math.sqrt(2.0 * config.num_layers)
        self.layernorm1 = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype)
        self.attention = Attention(config, out_std)
        self.layernorm2 = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype)
        self.use_moe = config.moe.expert_num > 1 and not dense
        if self.use_moe:
            self.output = MixtureOfExperts(config, out_std)
        else:
            self.output = FeedForward(config, out_std)
        self.compute_dtype = ms_dtype(config.compute_dtype)
        self.residual_add = ops.Add()
        self.no_aux = ms.Tensor(0.0, ms.float32)

    def _ffn_residual(self, x):
        """x + FFN(LN2(x)) and the FFN's load-balance loss (0 for a dense FFN)."""
        y = self.output(_cast(self.layernorm2(x), self.compute_dtype))
        y, aux = y if self.use_moe else (y, self.no_aux)
        return self.residual_add(x, _cast(y, x.dtype)), aux

    def construct(self, x, bias, query=None):
        """x [B, S, h] -> (x', k, v, load-balance loss). Callers call the cell itself (not a method), so that a
        pipeline plan places the whole layer on the block's stage."""
        a = _cast(self.layernorm1(x), self.compute_dtype)
        q_in = a if query is None else query
        attn, k, v = self.attention(q_in, a, bias)
        x, aux = self._ffn_residual(self.residual_add(x, _cast(attn, x.dtype)))
        return x, k, v, aux

    def step(self, x, bias, where, k_cache, v_cache, query=None):
        """x [B, S, h] new positions, written into the caches at `where` (see `Attention.step`) ->
        (x', k_cache, v_cache)."""
        a = _cast(self.layernorm1(x), self.compute_dtype)
        q_in = a if query is None else query
        attn, k_cache, v_cache = self.attention.step(q_in, a, bias, where, k_cache, v_cache)
        x, _ = self._ffn_residual(self.residual_add(x, _cast(attn, x.dtype)))
        return x, k_cache, v_cache


class Backbone(nn.Cell):
    """Embeddings -> blocks -> final LayerNorm (-> top-query layer for PanGu-alpha) -> hidden states.

    The residual stream is carried in fp32 (parameters may be lower precision); logits come from the
    tied word table.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dtype = ms_dtype(config.param_dtype)
        h, std = config.hidden_size, config.initializer_range
        # embedding tables stay fp32 whatever param_dtype says, as in the reference (and CPU Gather has no bf16)
        table = ms.float32
        self.word_embedding = Embedding(config.vocab_size, h, Normal(std), table)
        self.position_embedding = Embedding(config.max_position_embeddings, h, TruncatedNormal(std), table)
        self.blocks = nn.CellList([Block(config) for _ in range(config.num_blocks)])
        self.layernorm = LayerNorm(h, config.layernorm_epsilon, dtype)
        self.has_top_query = config.has_top_query_layer
        if self.has_top_query:
            self.top_query_embedding = Embedding(config.max_position_embeddings, h, TruncatedNormal(std), table)
            self.top_query_layer = Block(config, dense=True)  # dense even in an MoE model, as the reference
        self.embedding_sum = EmbeddingSum(config.dropout_rate)
        self.head = LMHead(ms_dtype(config.compute_dtype))
        self.compute_dtype = ms_dtype(config.compute_dtype)
        self.num_layers = config.num_layers
        self.num_heads = config.num_heads
        self.moe = config.moe.expert_num > 1
        self.aux_add = ops.Add()

    def _embed(self, input_ids, position_ids):
        return self.embedding_sum(self.word_embedding(input_ids), self.position_embedding(position_ids))

    def _top_query(self, position_ids):
        return _cast(self.top_query_embedding(position_ids), self.compute_dtype)

    def construct(self, input_ids, position_ids, bias):
        """input_ids, position_ids [B, S] int32; bias [B, 1, S, S] fp32 -> hidden [B, S, h] fp32.

        Training and the plain forward graph need no keys/values, so this path does not build them."""
        x, _ = self.hidden_and_aux(input_ids, position_ids, bias)
        return x

    def hidden_and_aux(self, input_ids, position_ids, bias):
        """As `construct`, also returning the summed load-balance loss of the MoE layers (0 when dense)."""
        x = self._embed(input_ids, position_ids)
        aux = None
        for block in self.blocks:
            x, _, _, layer_aux = block(x, bias)
            if self.moe:  # a dense model's graph stays free of the constant zeros
                aux = layer_aux if aux is None else self.aux_add(aux, layer_aux)
        x = self.layernorm(x)
        if self.has_top_query:
            x, _, _, _ = self.top_query_layer(x, bias, self._top_query(position_ids))
        return x, aux

    def prefill(self, input_ids, position_ids, bias):
        """As `construct`, also returning keys/values: tuples with one [B, n, S, d] tensor per layer."""
        x = self._embed(input_ids, position_ids)
        keys, values = (), ()
        for block in self.blocks:
            x, k, v, _ = block(x, bias)
            keys, values = keys + (k,), values + (v,)
        x = self.layernorm(x)
        if self.has_top_query:
            x, k, v, _ = self.top_query_layer(x, bias, self._top_query(position_ids))
            keys, values = keys + (k,), values + (v,)
        return x, keys, values

    def step(self, input_ids, position_ids, bias, where, keys, values, layers=None):
        """New positions into the cache: input_ids, position_ids [B, S] (S = 1 when decoding, a prompt chunk when
        prefilling); `where`: the slots they take, a bool mask [B, 1, T, 1] (S = 1) or a scatter index [B, n, S, 3]
        (`cache_index`), with bias [B, 1, S, T]; or None, to attend beside an unchanged cache, with bias
        [B, 1, S, T + S] (see `Attention.step`); keys/values: tuples of [B, n, T, d] -> (hidden [B, S, h], the
        updated keys and values, or with None the new positions' own [B, n, S, d]). The residual stream keeps
        the [B, S, h] layout of `construct`, so one shard strategy table serves training, prefill and decode. The
        top-query layer uses the true position of each row. `layers`, when given, are cells that run `Block.step`
        of each block (the cache graphs' reusable layers; without `where` for None)."""
        x = self._embed(input_ids, position_ids)
        new_keys, new_values = (), ()
        for i, block in enumerate(self.blocks):
            if layers is None:
                x, k, v = block.step(x, bias, where, keys[i], values[i])
            else:
                layer_args = (x, bias) if where is None else (x, bias, where)
                x, k, v = layers[i](*layer_args, keys[i], values[i])
            new_keys, new_values = new_keys + (k,), new_values + (v,)
        x = self.layernorm(x)
        if self.has_top_query:
            last = self.num_layers - 1
            x, k, v = self.top_query_layer.step(x, bias, where, keys[last], values[last],
                                                self._top_query(position_ids))
            new_keys, new_values = new_keys + (k,), new_values + (v,)
        return x, new_keys, new_values

    def cache_index(self, slots):
        """slots [B, S] int32 (the cache slot of each new position) -> the scatter index [B, n, S, 3] of the
        cache writes: (row, head, slot) for every head."""
        b, s = slots.shape
        n = self.num_heads
        rows = ops.broadcast_to(ops.arange(0, b, dtype=ms.int32).reshape(b, 1, 1), (b, n, s))
        heads = ops.broadcast_to(ops.arange(0, n, dtype=ms.int32).reshape(1, n, 1), (b, n, s))
        return ops.stack((rows, heads, ops.broadcast_to(slots.reshape(b, 1, s), (b, n, s))), axis=-1)

    @property
    def sharded_cache_write(self) -> bool:
        """Whether a parallel plan placed the arithmetic cache write (`Attention.sharded_cache_write`), which
        writes one position per row from a mask: then the cache graphs decode with the mask and prefill in one
        pass."""
        return any(block.attention.sharded_cache_write for block in self.blocks)

    def logits(self, hidden):
        """Tied head: hidden [..., h] -> logits [..., vocab] in fp32."""
        return self.head(hidden, self.word_embedding.embedding_table)
