"""Helpers shared by the benchmarks (run them as `python bench/<name>.py`, which puts this folder on the path)."""

from __future__ import annotations

import tempfile


def gpt2_small_pair():
    """(transformers GPT2LMHeadModel in eval mode, this project's model with the same random weights)."""
    import torch
    import transformers

    from pangu_zoo.models import from_pretrained

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = from_pretrained(tmp)
    return hf, ours


def elapsed(fn) -> float:
    """Seconds one call of `fn` takes."""
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`."""
    import statistics

    return statistics.median(elapsed(fn) for _ in range(repeats))


def child_error(result) -> dict:
    """{"error": the last telling line} of a measuring child process that failed (a `subprocess.run` result)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "WARNING" not in line]
    line = next((line for line in reversed(lines) if "Error" in line or "error" in line or "failed" in line),
                lines[-1] if lines else f"exit status {result.returncode}")
    return {"error": line[:300]}


def write_json(results: dict, path: str | None) -> None:
    """Write the results as JSON when a path was given."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(results, f, indent=2)


def decode_ms_per_token(generate, new_tokens: int, repeats: int, batch: int, synchronize=lambda: None) -> dict:
    """Time a KV-cache decode step: (median time of `generate(n + 1)` - median of `generate(1)`) / n.

    `generate(n)` runs a greedy generate of n new tokens and returns the ids; the prefill and the first token
    cancel out. The first call is a warm-up that compiles every graph of these shapes; its ids are returned."""
    import statistics
    import time

    tokens = generate(new_tokens + 1)
    generate(1)

    def seconds(n):
        synchronize()
        started = time.perf_counter()
        generate(n)
        synchronize()
        return time.perf_counter() - started

    long, short = [], []
    for _ in range(repeats):
        long.append(seconds(new_tokens + 1))
        short.append(seconds(1))
    per_token = (statistics.median(long) - statistics.median(short)) / new_tokens
    return {"ms_per_token": 1000 * per_token, "tokens_per_s": batch / per_token,
            "prefill_s": statistics.median(short), "tokens": tokens}


def ours_train_step(config, ids):
    """A callable running one training step of this project's model (AdamW, clipping, dynamic loss scale) on
    `ids` [B, S + 1]; returns (step, compile seconds)."""
    import mindspore as ms
    import numpy as np

    from pangu_zoo.models import build_model
    from pangu_zoo.models.loss import LanguageModelWithLoss
    from pangu_zoo.runtime import use_graph_mode
    from pangu_zoo.training.optimizer import build_optimizer
    from pangu_zoo.training.step import TrainOneStep, dynamic_loss_scale

    use_graph_mode()
    ms.set_seed(0)
    b, s = ids.shape[0], ids.shape[1] - 1
    model = build_model(config)
    cell = TrainOneStep(LanguageModelWithLoss(model), build_optimizer(model.trainable_params(), "adam", 1e-4),
                        dynamic_loss_scale())
    cell.set_train(True)
    inputs = (ms.Tensor(ids.astype(np.int32)),
              ms.Tensor(np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()),
              ms.Tensor(np.broadcast_to(np.tril(np.ones((s, s), np.int8)), (b, s, s)).copy()),
              ms.Tensor((ids[:, :-1] != config.pad_token_id).astype(np.float32)))

    def step():
        return float(cell(*inputs)[0].asnumpy())

    return step, elapsed(step)


def torch_train_step(model, ids, amp_dtype=None):
    """A callable running one training step of a transformers causal LM on `ids` [B, S + 1]: AdamW as this
    project's (betas 0.9/0.95, weight decay 0.1), global-norm clipping at 1.0, optional autocast (with a
    gradient scaler for float16)."""
    import contextlib

    import torch

    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    batch = torch.as_tensor(ids, dtype=torch.int64, device=device)

    def step():
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with autocast:
            loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step
