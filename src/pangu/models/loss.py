"""Masked next-token cross entropy, as the reference computes it (fp32, mask on the input token)."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from pangu.models.layers import MASK_VALUE


class MaskedCrossEntropy(nn.Cell):
    """loss = sum(mask * NLL) / (sum(mask) + 1e-5) with NLL from an fp32 log-softmax.

    logits [B, S, V]; labels [B, S] int32; mask [B, S] (1 = counted).
    """

    def construct(self, logits, labels, mask):
        logp = ops.log_softmax(ops.cast(logits, ms.float32), axis=-1)
        nll = -ops.gather_elements(logp, -1, ops.expand_dims(labels, -1)).squeeze(-1)
        mask = ops.cast(mask, ms.float32)
        return (nll * mask).sum() / (mask.sum() + 1e-5)


class LanguageModelWithLoss(nn.Cell):
    """Training network: rows of S+1 tokens -> scalar loss (the reference's PanGUAlphaWithLoss).

    tokens = ids[:, :-1], labels = ids[:, 1:]; the loss mask is `tokens != pad_token_id`, so the
    prediction made at an EOD/pad input is excluded while a label that is EOD still counts.
    """

    def __init__(self, model) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss = MaskedCrossEntropy()
        self.pad_token_id = model.config.pad_token_id

    def construct(self, input_ids, position_ids, attention_mask):
        """input_ids [B, S+1] int32; position_ids [B, S] int32; attention_mask [B, S, S] (1 = attend)."""
        tokens = input_ids[:, :-1]
        labels = input_ids[:, 1:]
        bias = (1.0 - ops.cast(attention_mask, ms.float32)) * MASK_VALUE
        logits = self.model(tokens, position_ids, ops.expand_dims(bias, 1))
        return self.loss(logits, labels, ops.not_equal(tokens, self.pad_token_id))
