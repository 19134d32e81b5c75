"""The training loop: data -> train step -> log line (console + JSON lines) -> periodic checkpoints.

Resuming restores parameters, optimizer moments, the optimizer's step, the loss scale and the data
position; with dropout off the resumed run repeats the uninterrupted one exactly (the sample order is a
pure function of the seed, the epoch and the position).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mindspore as ms
import numpy as np

from pangu_zoo.config import ParallelConfig, count_parameters
from pangu_zoo.data.dataset import create_dataset
from pangu_zoo.data.model_fit import check_data_fits_model
from pangu_zoo.data.sft.dataset import check_sft_data_fits_model, create_sft_dataset
from pangu_zoo.errors import ConfigError, DataError
from pangu_zoo.models.moe import routing_statistics
from pangu_zoo.parallel.strategy import batch_description
from pangu_zoo.runtime import use_graph_mode
from pangu_zoo.training.build import build_train_step
from pangu_zoo.training.checkpoint import checkpoint_files, load_training_checkpoint, save_training_checkpoint
from pangu_zoo.training.schedule import WarmupCosineLR, learning_rate_at

log = logging.getLogger(__name__)

DEFAULT_PEAK_GFLOPS = 332.0  # fp32 GEMM peak of a 2-core AVX-512 machine; pass the real one with --peak_gflops


@dataclass
class TrainSettings:
    data_path: str
    per_batch_size: int
    epochs: int = 1
    max_steps: int | None = None
    start_lr: float = 1e-4
    end_lr: float = 1e-6
    warmup_steps: int = 2000
    decay_steps: int = 200000
    optimizer: str = "adam"
    seed: int = 1
    eod_reset: bool = True
    eod_id: int | None = None
    save_dir: str = "output/checkpoints"
    save_steps: int = 2000
    keep_checkpoints: int = 1
    prefix: str = "pangu"
    resume: bool = False
    log_file: str | None = None
    log_every: int = 1
    peak_gflops: float = DEFAULT_PEAK_GFLOPS
    rank: int = 0
    rank_size: int = 1
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    full_batch: bool = False  # every rank reads the whole global batch (sharded plans)
    stage: str = "pretrain"  # "sft": data_path holds packed instruction rows (pangu_zoo.data.sft)
    opt_offload: bool = False  # optimizer state and update on the host (pangu_zoo.training.offload)

    @property
    def read_batch(self) -> int:
        """Rows this rank reads per step."""
        return self.parallel.global_batch(self.per_batch_size) if self.full_batch else self.per_batch_size

    @property
    def global_batch(self) -> int:
        return self.read_batch if self.full_batch else self.per_batch_size * self.rank_size


def batch_text(settings: TrainSettings) -> str:
    """How the global batch of a step is made up, for the start-up line."""
    if settings.full_batch:
        return batch_description(settings.parallel, settings.per_batch_size)
    return (f"global batch {settings.global_batch} = {settings.per_batch_size} per rank x {settings.rank_size} "
            "rank(s)")


def flops_per_token(config, seq_length: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L h S for attention (PaLM's estimate)."""
    return 6.0 * count_parameters(config) + 12.0 * config.num_layers * config.hidden_size * seq_length


def _dataset(settings: TrainSettings, model, samples_seen: int, epoch: int):
    shards, shard = (1, 0) if settings.full_batch else (settings.rank_size, settings.rank)
    if settings.stage == "sft":
        return create_sft_dataset(settings.read_batch, settings.data_path, device_num=shards, rank=shard,
                                  data_start_index=samples_seen, seed=settings.seed + epoch,
                                  seq_length=model.config.max_position_embeddings)
    return create_dataset(settings.read_batch, settings.data_path, device_num=shards,
                          rank=shard, data_start_index=samples_seen,
                          eod_reset=settings.eod_reset, eod_id=settings.eod_id, seed=settings.seed + epoch,
                          seq_length=model.config.max_position_embeddings)


def routing_text(routing: dict | None) -> str:
    """The MoE part of a log line: load-balance loss, tokens per expert and the share dropped."""
    if routing is None:
        return ""
    load = "/".join(str(count) for count in routing["expert_load"])
    return (f" aux {routing['aux_loss']:.4f} (in the loss) expert load {load} dropped "
            f"{100 * routing['dropped_share']:.1f}%")


def optimizer_step(train_cell) -> int:
    """The optimizer's own step counter, which the schedule reads: it does not advance on skipped steps."""
    return int(train_cell.optimizer.global_step.asnumpy().reshape(-1)[0])


def _check_lengths(settings: TrainSettings) -> None:
    if settings.per_batch_size < 1:
        raise ConfigError("--per_batch_size must be at least 1")
    if settings.epochs < 1:
        raise ConfigError(f"--epoch_size ({settings.epochs}) must be at least 1")
    if settings.max_steps is not None and settings.max_steps < 1:
        raise ConfigError(f"--max_steps ({settings.max_steps}) must be at least 1")


def train(model, settings: TrainSettings) -> list[dict]:
    """Train `model` in place; return the log records of the steps run in this call."""
    use_graph_mode()
    _check_lengths(settings)
    # before compiling: a mismatch would otherwise be a shape or index error from inside the graph
    if settings.stage == "sft":
        check_sft_data_fits_model(settings.data_path, model.config.max_position_embeddings, model.config.vocab_size)
    else:
        check_data_fits_model(settings.data_path, model.config.max_position_embeddings, model.config.vocab_size,
                              settings.eod_id)
    save_dir = Path(settings.save_dir)
    if settings.rank_size > 1:  # every rank keeps its own checkpoints, as the reference's rank_{i} folders
        save_dir = save_dir / f"rank_{settings.rank}"
    lr = WarmupCosineLR(settings.start_lr, settings.end_lr, settings.warmup_steps, settings.decay_steps)
    train_cell = build_train_step(model, settings.parallel, settings.optimizer, lr, opt_offload=settings.opt_offload)
    train_cell.set_train(True)

    step, samples_seen = 0, 0
    existing = checkpoint_files(save_dir, settings.prefix) if save_dir.exists() else []
    if settings.resume and existing:
        step, samples_seen = load_training_checkpoint(train_cell, existing[-1])
        log.info("resumed from %s at step %d (%d samples seen)", existing[-1], step, samples_seen)
    elif existing and not settings.resume:
        raise ConfigError(f"{save_dir} already holds checkpoints ({existing[-1].name}); pass --pre_trained "
                          "to resume from them or choose another --save_checkpoint_path")

    first = _dataset(settings, model, 0, 0)
    steps_per_epoch = first.get_dataset_size()
    if steps_per_epoch == 0:
        raise DataError(f"{settings.data_path} holds fewer samples than one batch of {settings.read_batch}")
    global_batch = settings.global_batch
    samples_per_epoch = steps_per_epoch * global_batch
    total_steps = settings.max_steps or settings.epochs * steps_per_epoch
    if settings.rank == 0:
        print(f"training {total_steps} steps, {batch_text(settings)}", flush=True)
    seq_length = model.config.max_position_embeddings
    tokens_per_step = settings.per_batch_size * seq_length
    step_flops = flops_per_token(model.config, seq_length) * tokens_per_step
    log_path = Path(settings.log_file) if settings.log_file else save_dir / "train_log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    with log_path.open("a", encoding="utf-8") as log_stream:
        while step < total_steps:
            epoch = samples_seen // samples_per_epoch
            dataset = _dataset(settings, model, samples_seen - epoch * samples_per_epoch, epoch)
            for batch in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
                lr = learning_rate_at(optimizer_step(train_cell), settings.start_lr, settings.end_lr,
                                      settings.warmup_steps, settings.decay_steps)
                start = time.perf_counter()
                loss, overflow, scale, norm = train_cell(
                    ms.Tensor(batch["input_ids"]), ms.Tensor(batch["position_ids"]),
                    ms.Tensor(batch["attention_mask"]), ms.Tensor(batch["loss_mask"]))
                loss_value = float(loss.asnumpy())
                elapsed = time.perf_counter() - start
                step += 1
                samples_seen += global_batch
                record = {
                    "step": step, "epoch": epoch, "loss": loss_value, "lr": lr,
                    "loss_scale": float(scale.asnumpy()), "overflow": bool(overflow.asnumpy()),
                    "grad_norm": float(norm.asnumpy()), "tokens_per_s": tokens_per_step / elapsed,
                    "mfu": step_flops / elapsed / (settings.peak_gflops * 1e9),
                }
                routing = routing_statistics(model)
                if routing is not None:  # MoE: tokens per expert, dropped share, load-balance loss (in "loss")
                    record.update(routing)
                records.append(record)
                log_stream.write(json.dumps(record) + "\n")
                log_stream.flush()
                if step % settings.log_every == 0 or step == total_steps:
                    log.info("step %d loss %.4f lr %.3g scale %.3g overflow %s tokens/s %.0f mfu %.1f%%%s", step,
                             loss_value, record["lr"], record["loss_scale"], record["overflow"],
                             record["tokens_per_s"], 100 * record["mfu"], routing_text(routing))
                if settings.save_steps and (step % settings.save_steps == 0 or step == total_steps):
                    save_training_checkpoint(train_cell, save_dir, settings.prefix, step, samples_seen,
                                             settings.keep_checkpoints)
                if step >= total_steps:
                    break
    if not np.isfinite([r["loss"] for r in records]).all():
        log.warning("some losses were not finite; see %s", log_path)
    return records
