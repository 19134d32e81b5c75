"""Masked next-token cross entropy, as the reference computes it (fp32, mask on the input token).

Every op is a primitive attribute so a parallel plan can shard it (`pangu_zoo.parallel.placement`).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from pangu_zoo.attention_masks import MASK_VALUE


class MaskedCrossEntropy(nn.Cell):
    """loss = sum(mask * NLL) / (sum(mask) + 1e-5) with NLL = logsumexp(logits) - logits[label] in fp32.

    logits [B, S, V]; labels [B, S] int32; mask [B, S] (1 = counted). With `vocab_parallel` (set when a plan
    splits the vocabulary over devices) the label's logit is picked by a one-hot product, which shards
    along the vocabulary; otherwise by a gather, which is cheaper but cannot split that axis.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size  # a constant: inferred shapes may be those of a sliced word table
        self.vocab_parallel = False
        self.max = ops.ReduceMax(keep_dims=True)
        self.sub = ops.Sub()
        self.exp = ops.Exp()
        self.sum_exp = ops.ReduceSum(keep_dims=True)
        self.log = ops.Log()
        self.onehot = ops.OneHot()
        self.pick_mul = ops.Mul()
        self.pick_sum = ops.ReduceSum(keep_dims=True)
        self.pick_gather = ops.GatherD()
        self.log_softmax = ops.LogSoftmax(axis=-1)
        self.nll_sub = ops.Sub()
        self.mask_mul = ops.Mul()
        self.mask_cast = ops.Cast()
        self.masked_sum = ops.ReduceSum()
        self.mask_sum = ops.ReduceSum()
        self.aux_sum = ops.ReduceSum()
        self.aux_add = ops.Add()
        self.on = ms.Tensor(1.0, ms.float32)
        self.off = ms.Tensor(0.0, ms.float32)

    def construct(self, logits, labels, mask, aux=None):
        """aux: the MoE load-balance loss [1], added here so that it joins the loss on the loss's pipeline stage."""
        vocab = self.vocab_size
        logits = ops.cast(logits, ms.float32)
        if logits.ndim != 2:
            logits = logits.reshape(-1, vocab)
        labels = labels.reshape(-1)
        if self.vocab_parallel:
            shifted = self.sub(logits, ops.stop_gradient(self.max(logits, -1)))
            log_sum = self.log(self.sum_exp(self.exp(shifted), -1))
            # depth from the logits, not the constant: inside a pipeline stage they may be the head's slice
            onehot = self.onehot(labels, shifted.shape[-1], self.on, self.off)
            nll = self.nll_sub(log_sum, self.pick_sum(self.pick_mul(shifted, onehot), -1)).reshape(-1)
        else:  # the fused log-softmax kernel is faster when the vocabulary axis is whole
            nll = -self.pick_gather(self.log_softmax(logits), 1, labels.reshape(-1, 1)).reshape(-1)
        mask = self.mask_cast(mask.reshape(-1), ms.float32)
        loss = self.masked_sum(self.mask_mul(nll, mask), ()) / (self.mask_sum(mask, ()) + 1e-5)
        if aux is None:
            return loss
        return self.aux_add(loss, self.aux_sum(aux))


class LanguageModelWithLoss(nn.Cell):
    """Training network: rows of S+1 tokens -> scalar loss (the reference's PanGUAlphaWithLoss).

    tokens = ids[:, :-1], labels = ids[:, 1:]. The loss mask is an input, the dataset's `loss_mask` column
    (0 where the input token is the pad id recorded by preprocess), so the data decides alone which
    predictions count. Shapes come from the inputs, so the cell also runs on the micro-batches of a pipeline.
    """

    def __init__(self, model) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss = MaskedCrossEntropy(model.config.vocab_size)
        self.slice_tokens = ops.StridedSlice()
        self.slice_labels = ops.StridedSlice()
        self.loss_mask_cast = ops.Cast()
        self.mask_sub = ops.Sub()
        self.mask_mul = ops.Mul()
        self.mask_cast = ops.Cast()
        self.mask_expand = ops.ExpandDims()
        self.one = ms.Tensor(1.0, ms.float32)
        self.blocked = ms.Tensor(MASK_VALUE, ms.float32)

    def construct(self, input_ids, position_ids, attention_mask, loss_mask):
        """input_ids [B, S+1] int32; position_ids [B, S] int32; attention_mask [B, S, S] (1 = attend);
        loss_mask [B, S] (1 = the prediction at that input counts)."""
        batch, width = input_ids.shape
        tokens = self.slice_tokens(input_ids, (0, 0), (batch, width - 1), (1, 1))
        labels = self.slice_labels(input_ids, (0, 1), (batch, width), (1, 1))
        bias = self.mask_mul(self.mask_sub(self.one, self.mask_cast(attention_mask, ms.float32)), self.blocked)
        hidden, aux = self.model.backbone.hidden_and_aux(tokens, position_ids, self.mask_expand(bias, 1))
        # logits as tokens x vocab: no reshape after the head, whose table may be a sliced parameter
        logits = self.model.backbone.logits(hidden.reshape(-1, hidden.shape[-1]))
        if self.model.backbone.moe:  # the load-balance loss trains the routers (the reference dropped it)
            return self.loss(logits, labels, self.loss_mask_cast(loss_mask, ms.float32), aux)
        return self.loss(logits, labels, self.loss_mask_cast(loss_mask, ms.float32))
