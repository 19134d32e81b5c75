"""WikiText-2 perplexity, the mindformers way, plus the token-weighted figure.

Data (mindformers `wikitext2_data_process.py`): the file's passages are cleaned (`pangu_zoo.data.wikitext`),
joined with "\\n", tokenised once and cut into consecutive non-overlapping blocks of `block_size` (1024)
tokens; the remainder is dropped. By default the last passage of the file is dropped too, as the
reference never flushes it (`keep_last_passage=True` keeps it).

Two numbers, each labelled:

* ``mindformers``: per batch, the mean cross-entropy of tokens 1..L-1 of every block given the tokens before
  it (within the block); loss = arithmetic mean of the batch losses; PPL = exp(loss). This is mindformers'
  `PerplexityMetric` (a mean of per-batch means).
* ``token_weighted``: exp(total NLL / number of predicted tokens) over the same blocks plus the leftover
  tail as one shorter block, so every token but the first of each block is counted once.

With equal blocks and `batch_size` 1 the two differ only by the tail block.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.data.wikitext import is_heading, wikitext_passages
from pangu_zoo.errors import DataError, InputError
from pangu_zoo.evaluation.log_probs import label_log_probs

logger = logging.getLogger(__name__)


def wikitext_token_blocks(text: str, tokenizer, block_size: int = 1024,
                          keep_last_passage: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(blocks int64 [N, block_size], leftover tail int64 [R < block_size]) of a WikiText file's text."""
    if block_size < 2:
        raise InputError(f"block_size ({block_size}) must be at least 2")
    passages = wikitext_passages(text)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if passages and not keep_last_passage and lines and not is_heading(lines[-1]):
        passages = passages[:-1]  # the reference never flushes the passage after the last heading
    if not passages:
        raise DataError("the WikiText text has no passages (non-heading lines between '= Heading =' lines)")
    ids = np.asarray(tokenizer.encode("\n".join(passages)), dtype=np.int64)
    count = len(ids) // block_size
    if count == 0:
        raise DataError(f"the text has {len(ids)} tokens, fewer than one block of {block_size}; "
                        f"lower --block_size")
    return ids[:count * block_size].reshape(count, block_size), ids[count * block_size:]


def _block_nll(model, blocks: np.ndarray) -> np.ndarray:
    """Per-token NLL [B, L-1] (float64) of tokens 1..L-1 of each block given the earlier ones."""
    logits = model.forward_logits(blocks)
    return -label_log_probs(logits[:, :-1], blocks[:, 1:])


def block_perplexity(model, blocks: np.ndarray, tail: np.ndarray | None = None, batch_size: int = 1,
                     progress: bool = False) -> dict[str, Any]:
    """Perplexity of token blocks [N, L] (see the module docstring); `tail` is the leftover shorter block."""
    blocks = np.asarray(blocks, dtype=np.int64)
    if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise InputError(f"blocks must be [N >= 1, L >= 2] token ids, got shape {blocks.shape}")
    if blocks.shape[1] > model.config.max_position_embeddings:
        raise InputError(f"block_size {blocks.shape[1]} exceeds the model's position table "
                         f"({model.config.max_position_embeddings}); lower --block_size")
    if batch_size < 1:
        raise InputError(f"batch_size ({batch_size}) must be at least 1")
    starts = range(0, len(blocks), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    batch_losses, total_nll, total_tokens = [], 0.0, 0
    for start in starts:
        nll = _block_nll(model, blocks[start:start + batch_size])
        batch_losses.append(float(nll.mean()))
        total_nll += float(nll.sum())
        total_tokens += nll.size
    if tail is not None and len(tail) >= 2:
        nll = _block_nll(model, np.asarray(tail, dtype=np.int64)[None, :])
        total_nll += float(nll.sum())
        total_tokens += nll.size
    mf_loss = float(np.mean(batch_losses))
    tw_loss = total_nll / total_tokens
    return {
        "mindformers": {"loss": mf_loss, "PPL": math.exp(mf_loss)},
        "token_weighted": {"loss": tw_loss, "PPL": math.exp(tw_loss), "tokens": total_tokens},
        "blocks": int(blocks.shape[0]), "block_size": int(blocks.shape[1]), "batch_size": batch_size,
    }


def evaluate_wikitext(model, tokenizer, data_file: str | Path, block_size: int = 1024, limit_blocks: int | None = None,
                      batch_size: int = 1, keep_last_passage: bool = False, progress: bool = True) -> dict[str, Any]:
    """Perplexity of a WikiText `.tokens` file; logs and returns both figures."""
    path = Path(data_file)
    if not path.is_file():
        raise DataError(f"WikiText file {path} does not exist; pass --data_file wiki.valid.tokens")
    start = time.perf_counter()
    blocks, tail = wikitext_token_blocks(path.read_text(encoding="utf-8"), tokenizer, block_size, keep_last_passage)
    if limit_blocks is not None:
        blocks, tail = blocks[:limit_blocks], None
    result = block_perplexity(model, blocks, tail, batch_size=batch_size, progress=progress)
    result["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("mindformers: %s; token-weighted: %s", result["mindformers"], result["token_weighted"])
    return result
