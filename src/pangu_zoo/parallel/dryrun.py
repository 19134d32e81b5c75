"""`pangu dryrun`: prove a parallel plan by compiling the real sharded training step (or, with `--run_type
predict`, the graphs of sharded inference), one rank per process.

Takes the model and parallel arguments of `train.py`, checks the plan (§7.1), then compiles each chosen rank
(default: the first rank of every pipeline stage) under MindSpore's simulation mode in a subprocess with
the stub CUDA environment of `pangu_zoo.parallel.simenv`. Reports, per rank, the parts of the model it holds,
every parameter's full and slice shape, whether its optimizer state is sharded, the bytes of parameters
and Adam state on the device, the compile time and the peak memory of the compile. Exit 0 only when every
rank compiled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger(__name__)

WORKER = "pangu_zoo.parallel.dryrun_worker"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pangu_zoo.lora_cli import add_adapter_arguments
    from pangu_zoo.training.cli import add_model_arguments, add_parallel_arguments

    add_model_arguments(parser)
    add_parallel_arguments(parser)
    add_adapter_arguments(parser)
    run = parser.add_argument_group("dry run")
    run.add_argument("--run_type", choices=["train", "predict"], default="train",
                     help="train: the training step of the plan given; predict: the forward, prefill and decode "
                          "graphs of predict.py --distribute true (model parallel over all devices)")
    run.add_argument("--rank", default=None,
                     help="ranks to compile: 'all', or a comma list such as 0,63 (default: first rank of every stage)")
    run.add_argument("--json", help="write the full report (every rank, every parameter) to this file")
    run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per rank")
    run.add_argument("--jobs", type=int, default=1,
                     help="ranks compiled at once (one process each; a 200B rank needs about 9 GB)")
    run.add_argument("--cache_dir", help="where the simulation environment is built (default ~/.cache/pangu)")
    run.add_argument("--brief", action="store_true", help="one line per rank, no parameter table")
    run.add_argument("--stage", choices=["pretrain", "sft"], default="pretrain",
                     help="sft: compile with packed instruction batches (int8 block-diagonal masks, restarted "
                          "positions), as train.py --stage sft feeds the step")


def chosen_ranks(spec: str | None, device_num: int, stages: int) -> list[int]:
    from pangu_zoo.errors import ConfigError

    if spec is None:
        per_stage = device_num // stages
        return [stage * per_stage for stage in range(stages)]
    if spec == "all":
        return list(range(device_num))
    try:
        ranks = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--rank {spec!r} must be 'all' or a comma-separated list of integers") from None
    bad = [rank for rank in ranks if not 0 <= rank < device_num]
    if bad or not ranks:
        raise ConfigError(f"--rank {spec!r}: ranks must lie in 0..{device_num - 1}")
    return ranks


def _run_worker(spec_path: Path, report_path: Path, env: dict, cwd: Path, timeout: int) -> tuple[int, float, int]:
    """(exit status, wall seconds, peak RSS in bytes) of one worker process."""
    start = time.perf_counter()
    with open(cwd / "worker.log", "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", WORKER, str(spec_path), str(report_path)], env=env,
                                   cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024


_LOG_PREFIX = re.compile(r"^\[ERROR\] \w+\([^)]*\):\S+ \[[^\]]*\] \w*\]\s*")


def compiler_detail(log_text: str) -> str | None:
    """The parallel compiler's own [ERROR] line (which names the op, strategy and shape) from a worker log."""
    from pangu_zoo.parallel.dryrun_worker import COMPILER_ERRORS

    for line in log_text.splitlines():
        if line.startswith("[ERROR]") and COMPILER_ERRORS.search(line):
            return _LOG_PREFIX.sub("", line).strip()[:500]
    return None


def _mb(value: int) -> str:
    return f"{value / 2**20:.1f} MB" if value < 2**30 else f"{value / 2**30:.2f} GB"


def _holds_text(holds: list[str]) -> str:
    blocks = [int(part.split(".")[1]) for part in holds if part.startswith("blocks.")]
    others = [part for part in holds if not part.startswith("blocks.")]
    text = []
    if blocks:
        text.append(f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"block {blocks[0]}")
    return ", ".join(text + others) or "nothing"


def parameter_lines(report: dict) -> list[str]:
    """The parameter table of one rank; blocks after the first one held are folded into one line."""
    lines, first_block, folded = [], None, set()
    for param in report["parameters"]:
        name = param["name"]
        parts = name.split(".")
        layer_key = "blocks" if "blocks" in parts else "layers"  # openPangu: model.layers.{i}
        if layer_key in parts:
            block = parts[parts.index(layer_key) + 1]
            first_block = block if first_block is None else first_block
            if block != first_block:
                folded.add(int(block))
                continue
        line = f"    {name:60s} {str(param['full_shape']):16s} -> {str(param['slice_shape']):16s}"
        if "optimizer_shape" in param:
            line += " optimizer " + ("sharded " + str(param["optimizer_shape"]) if param["optimizer_sharded"]
                                     else "not sharded")
        if "holds" in param:  # which slice of the loaded weights this rank holds, read from the values
            held = param["holds"]
            line += (" weights: whole" if held == {} else " weights: NOT a slice" if held is None
                     else f" weights: part {held['part']} of axis {held['axis']}")
        lines.append(line)
    if folded:
        lines.append(f"    (blocks {min(folded)}-{max(folded)}: same shapes as block {first_block})")
    return lines


def lora_settings(args: argparse.Namespace) -> dict | None:
    """The adapters --lora_rank asks for, as the worker's spec carries them (the worker trains only them)."""
    from pangu_zoo.lora_cli import lora_config

    config = lora_config(args)
    return None if config is None else config.to_dict()


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.errors import ConfigError
    from pangu_zoo.parallel.simenv import ensure_simulation_env
    from pangu_zoo.parallel.strategy import batch_description
    from pangu_zoo.training.cli import checked_plan, model_config

    config = model_config(args)
    device_num = args.device_num
    if device_num < 2:
        raise ConfigError("--device_num must be at least 2 for a dry run of a parallel plan")
    if args.run_type == "predict":
        return run_predict(args, config)
    parallel = checked_plan(args, config, device_num, args.per_batch_size)
    global_batch = parallel.global_batch(args.per_batch_size)
    ranks = chosen_ranks(args.rank, device_num, parallel.pipeline_stage)
    root = ensure_simulation_env(args.cache_dir)
    spec = {"model": config.to_dict(), "parallel": asdict(parallel), "device_num": device_num,
            "global_batch": global_batch, "optimizer": args.optimizer, "opt_offload": bool(args.opt_offload),
            "stage": args.stage,
            "optimizer_shard_threshold_kb": args.optimizer_shard_threshold, "lora": lora_settings(args)}
    print(f"dry run: {config.family} h={config.hidden_size} layers={config.num_layers} "
          f"seq={config.max_position_embeddings}"
          f" on {device_num} devices = dp {parallel.data_parallel} x mp {parallel.model_parallel} x stages "
          f"{parallel.pipeline_stage}" + (f" (experts {config.moe.expert_num} over ep {parallel.expert_parallel}, "
                                           f"top-{config.moe.num_experts_chosen})" if config.moe.expert_num > 1 else "")
          + f" (micro {parallel.micro_batch_num}, optimizer shard "
          f"{int(parallel.optimizer_shard)}, word_emb_dp {int(parallel.vocab_emb_dp)}), "
          f"{batch_description(parallel, args.per_batch_size)}; "
          f"compiling rank(s) {', '.join(map(str, ranks))}", flush=True)
    return compile_ranks(args, spec, ranks, root, describe)


def describe(report: dict, wall: float, peak: int, brief: bool) -> str:
    """The lines printed for one compiled rank of a training plan."""
    text = (f"rank {report['rank']} (stage {report['stage']}): compiled in {report['compile_s']:.1f} s "
            f"({wall:.1f} s process, peak RSS {_mb(peak)}); holds {_holds_text(report['holds'])}; parameters "
            f"{_mb(report['parameter_bytes'])} + Adam state {_mb(report['optimizer_bytes'])}")
    if report.get("moe_layers"):
        text += "\n  " + moe_text(report)
    host_updates = report.get("collectives", {}).get("host_optimizer_updates")
    if host_updates:
        text += f"\n  optimizer offloaded: {host_updates} parameter updates run on the host CPU"
    return text if brief else text + "\n" + "\n".join(parameter_lines(report))


def moe_text(report: dict) -> str:
    """The MoE line of a rank: its MoE layers, the AllToAlls of the step and the experts' slices."""
    layers, alltoall = report["moe_layers"], report["collectives"]["AlltoAll"]
    experts = [p for p in report["parameters"] if p["name"].endswith("output.mapping.weight")]
    slices = f"; expert weights {experts[0]['full_shape']} -> {experts[0]['slice_shape']}" if experts else ""
    return (f"MoE: {layers} layer(s) on this rank, {alltoall} AlltoAll in the step "
            f"({alltoall / layers:g} per layer: forward and backward){slices}")


def describe_predict(report: dict, wall: float, peak: int, brief: bool) -> str:
    """The lines printed for one compiled rank of the sharded predict plan."""
    graphs = report["graphs"]
    times = ", ".join(f"{name} {graph['compile_s']:.1f} s" for name, graph in graphs.items())
    text = (f"rank {report['rank']}: compiled {times} ({wall:.1f} s process, peak RSS {_mb(peak)}); parameters "
            f"{_mb(report['parameter_bytes'])}; KV cache per layer on this rank: prefill returns "
            f"{graphs['prefill']['outputs'][1]}, decode takes {graphs['decode']['inputs'][4]} and returns "
            f"{graphs['decode']['outputs'][1]}; logits {graphs['decode']['outputs'][0]}")
    return text if brief else text + "\n" + "\n".join(parameter_lines(report))


def run_predict(args: argparse.Namespace, config) -> int:
    """Dry run of `predict.py --distribute true`: every device holds a slice of every layer."""
    from pangu_zoo.config import count_parameters
    from pangu_zoo.parallel.inference import inference_plan
    from pangu_zoo.parallel.simenv import ensure_simulation_env

    device_num = args.device_num
    inference_plan(config, device_num)
    if args.rank is None:
        ranks = sorted({0, device_num - 1})
    else:
        ranks = chosen_ranks(args.rank, device_num, 1)
    root = ensure_simulation_env(args.cache_dir)
    # real weights are loaded (and each rank's slice checked) when they fit comfortably in memory
    spec = {"run_type": "predict", "model": config.to_dict(), "device_num": device_num,
            "batch": args.per_batch_size, "check_weights": count_parameters(config) < 50_000_000}
    print(f"dry run of sharded inference: {config.family} h={config.hidden_size} layers={config.num_layers} "
          f"seq={config.max_position_embeddings} batch={args.per_batch_size} on {device_num} devices = model "
          f"parallel {device_num}, word table whole; compiling rank(s) {', '.join(map(str, ranks))}", flush=True)
    return compile_ranks(args, spec, ranks, root, describe_predict)


def compile_ranks(args: argparse.Namespace, spec: dict, ranks: list[int], root: Path, describe) -> int:
    """Compile each rank in its own simulated process; print its report; exit status 0 when all compiled."""
    from pangu_zoo.parallel.simenv import simulation_environ
    from pangu_zoo.parallel.strategy import rank_stage

    device_num = spec["device_num"]
    stages = spec.get("parallel", {}).get("pipeline_stage", 1)
    work = Path(tempfile.mkdtemp(prefix="pangu-dryrun-"))
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    def compile_one(rank: int) -> tuple[dict, str]:
        """Compile one rank; return its report (or error record) and the text to print."""
        rank_dir = work / f"rank_{rank}"
        rank_dir.mkdir()
        report_path = rank_dir / "report.json"
        status, wall, peak = _run_worker(spec_path, report_path, simulation_environ(root, device_num, rank),
                                         rank_dir, args.timeout)
        stage = rank_stage(rank, device_num, stages)
        if status == 0 and report_path.exists():
            report = json.loads(report_path.read_text())
            report.update(process_s=round(wall, 2), peak_rss_bytes=peak)
            return report, describe(report, wall, peak, args.brief)
        log_text = (rank_dir / "worker.log").read_text(errors="replace")
        if report_path.exists():
            message = json.loads(report_path.read_text())["error"]
            detail = compiler_detail(log_text)
            if detail and detail not in message:
                message = f"{message}: {detail}"
        elif status in (-9, 137):
            message = f"killed after {wall:.0f} s (timeout {args.timeout} s, or out of memory)"
        else:
            log_tail = log_text.strip().splitlines()[-3:]
            message = f"worker exited with status {status}: {' | '.join(log_tail)}"
        record = {"rank": rank, "stage": stage, "error": message, "process_s": round(wall, 2), "peak_rss_bytes": peak}
        return record, f"rank {rank} (stage {stage}): FAILED: {message}"

    results = []
    try:
        # each rank is its own process; --jobs N compiles N at once (mind memory: each may take GBs)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for future in as_completed([pool.submit(compile_one, rank) for rank in ranks]):
                record, text = future.result()
                results.append(record)
                print(text, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda record: record["rank"])
    failed = sum("error" in record for record in results)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(json.dumps({"plan": spec, "ranks": results}, indent=1))
        staging.replace(path)
    print(f"{len(ranks) - failed} of {len(ranks)} rank(s) compiled" + ("" if not failed else "; the plan is rejected"))
    return 0 if not failed else 1
