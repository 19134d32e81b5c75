"""An independent PyTorch forward pass over Megatron checkpoint files, written from the key layout of formats.md §4.2
(GPT-2) and §5.3 (PanGu-alpha GPU port), not from this project's code.

It runs tensor-parallel ranks the way Megatron's parallel layers do: each rank computes its column-parallel rows
(its heads, its slice of the MLP), the row-parallel partial products are summed over the ranks and the bias added
once, the vocab-parallel embedding looks each id up on the rank that owns it, and the logits are the ranks'
vocabulary slices side by side. One rank is the plain model.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def load_ranks(directory: Path) -> list[dict]:
    """`language_model` of every `release/mp_rank_XX/model_optim_rng.pt`, in rank order, as float32."""
    files = sorted(Path(directory).glob("release/mp_rank_*/model_optim_rng.pt"))
    assert files, f"no shards under {directory}"
    with torch.serialization.safe_globals([argparse.Namespace]):
        ranks = [torch.load(file, weights_only=True)["model"]["language_model"] for file in files]
    return [_to_float(rank) for rank in ranks]


def _to_float(tree):
    return {k: _to_float(v) for k, v in tree.items()} if isinstance(tree, dict) else tree.float()


def _layer_norm(params: dict, prefix: str, x, eps: float):
    return F.layer_norm(x, x.shape[-1:], params[prefix + "weight"], params[prefix + "bias"], eps)


def _vocab_parallel_embedding(ranks: list[dict], ids):
    out, start = 0, 0
    for rank in ranks:
        table = rank["embedding"]["word_embeddings"]["weight"]
        local = ids - start
        owned = (local >= 0) & (local < table.shape[0])
        out = out + table[local.clamp(0, table.shape[0] - 1)] * owned[..., None]
        start += table.shape[0]
    return out


def _attention(layers: list[dict], prefix: str, query_in, kv_in, heads: int, fused: bool):
    b, s, h = kv_in.shape
    local, hn = heads // len(layers), h // heads
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    out = 0
    for layer in layers:
        if fused:  # rows [local heads, (q, k, v), head_dim]
            p = prefix + "self_attention."
            mixed = F.linear(kv_in, layer[p + "query_key_value.weight"], layer[p + "query_key_value.bias"])
            q, k, v = mixed.view(b, s, local, 3, hn).unbind(3)
        else:
            p = prefix + "attention."
            q, k, v = (F.linear(x, layer[p + n + ".weight"], layer[p + n + ".bias"]).view(b, s, local, hn)
                       for n, x in (("query", query_in), ("key", kv_in), ("value", kv_in)))
        scores = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(hn)
        probs = scores.masked_fill(~causal, -10000.0).softmax(-1)
        context = torch.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, s, local * hn)
        out = out + F.linear(context, layer[p + "dense.weight"])  # row-parallel: partial sums
    return out + layers[0][p + "dense.bias"]


def _mlp(layers: list[dict], prefix: str, x):
    p = prefix + "mlp."
    out = sum(F.linear(F.gelu(F.linear(x, layer[p + "dense_h_to_4h.weight"], layer[p + "dense_h_to_4h.bias"]),
                              approximate="tanh"), layer[p + "dense_4h_to_h.weight"]) for layer in layers)
    return out + layers[0][p + "dense_4h_to_h.bias"]


def _layer(layers, prefix, x, heads, fused, eps, query=None):
    a = _layer_norm(layers[0], prefix + "input_layernorm.", x, eps)
    x = x + _attention(layers, prefix, a if query is None else query, a, heads, fused)
    return x + _mlp(layers, prefix, _layer_norm(layers[0], prefix + "post_attention_layernorm.", x, eps))


def megatron_logits(ranks: list[dict], ids, heads: int, pangu: bool, eps: float = 1e-5):
    """Logits [B, S, padded vocab] of token ids [B, S] (positions 0..S-1, causal attention)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    positions = torch.arange(ids.shape[1])
    layers = [rank["transformer" if pangu else "encoder"] for rank in ranks]
    count = len({name.split(".")[1] for name in layers[0] if name.startswith("layers.")})
    x = _vocab_parallel_embedding(ranks, ids) + ranks[0]["embedding"]["position_embeddings"]["weight"][positions]
    for i in range(count):
        x = _layer(layers, f"layers.{i}.", x, heads, not pangu, eps)
    x = _layer_norm(layers[0], "final_layernorm.", x, eps)
    if pangu:  # query from the raw top-query embedding; key/value and the residual from the final-LN output
        query = ranks[0]["topQueryEmbedding"]["top_query_embeddings"]["weight"][positions].expand_as(x)
        x = _layer(layers, "topQueryLayer.", x, heads, False, eps, query=query)
    return torch.cat([F.linear(x, rank["embedding"]["word_embeddings"]["weight"]) for rank in ranks], -1)
