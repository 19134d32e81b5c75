"""One rank of a dry run: compile the sharded training step in simulation mode and report its layout.

Run by `pangu dryrun` in a subprocess whose environment comes from `pangu.parallel.simenv` (stub CUDA,
`MS_SIMULATION_LEVEL=0`, `RANK_ID`, `RANK_SIZE`):

    python -m pangu.parallel.dryrun_worker SPEC.json REPORT.json

SPEC holds the model config, the parallel config, device_num, batch and optimizer settings. The step is
built by `pangu.training.build`, the same code `train.py` runs. REPORT receives the per-rank layout, or
`{"error": one readable line}` with exit status 1.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import traceback
from pathlib import Path

ITEM_BYTES = {"Float32": 4, "Float16": 2, "BFloat16": 2, "Int32": 4}
# what the parallel compiler says when it rejects a plan; the first matching line is the one to show
COMPILER_ERRORS = re.compile(r"(cannot be divisible|can not be divisible|must be divisible|has multiple users|"
                              r"must be smaller than|accumulate of x_shape|requires \d+ devices|init failed|"
                              r"Invalid strategy)", re.IGNORECASE)


def readable_error(error: BaseException) -> str:
    """One readable line for a failed compile: the compiler's own message, not its C++ stack."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if COMPILER_ERRORS.search(line):
            return line[:500]
    return (lines[0] if lines else type(error).__name__)[:500]


def _part(name: str) -> str:
    """Parameter name -> the model part that holds it (blocks.3, word_embedding, top_query_layer, ...)."""
    parts = name.split(".")
    if "blocks" in parts:
        i = parts.index("blocks")
        return ".".join(parts[i:i + 2])
    if "backbone" in parts:
        return parts[parts.index("backbone") + 1]
    return parts[0]


def _bytes(shape, dtype: str) -> int:
    return math.prod(shape) * ITEM_BYTES.get(dtype, 4)


def compile_rank(spec: dict) -> dict:
    import mindspore as ms
    from mindspore.common.initializer import One
    from mindspore.communication import get_rank, init

    from pangu.config import ModelConfig, ParallelConfig
    from pangu.models import build_model
    from pangu.parallel.strategy import layer_stages, rank_stage
    from pangu.runtime import use_graph_mode
    from pangu.training.build import build_train_step, configure_parallel
    from pangu.training.schedule import WarmupCosineLR

    use_graph_mode()
    ms.set_device("GPU")
    init()
    config = ModelConfig.from_dict(spec["model"])
    parallel = ParallelConfig(**spec["parallel"])
    device_num = spec["device_num"]
    configure_parallel(parallel, device_num, "semi_auto_parallel",
                       optimizer_shard_threshold_kb=spec.get("optimizer_shard_threshold_kb"))
    model = build_model(config)
    full_shapes = {p.name: tuple(p.shape) for p in model.trainable_params()}
    dtypes = {p.name: str(p.dtype) for p in model.trainable_params()}
    lr = WarmupCosineLR(1e-4, 1e-6, 100, 1000)
    train_cell = build_train_step(model, parallel, spec.get("optimizer", "adam"), lr)

    batch, seq = spec["global_batch"], config.max_position_embeddings
    inputs = (ms.Tensor(shape=(batch, seq + 1), dtype=ms.int32, init=One()),
              ms.Tensor(shape=(batch, seq), dtype=ms.int32, init=One()),
              ms.Tensor(shape=(batch, seq, seq), dtype=ms.int32, init=One()))
    start = time.perf_counter()
    train_cell.set_train(True)
    train_cell.compile(*inputs)
    compile_s = time.perf_counter() - start

    rank = get_rank()
    stage = rank_stage(rank, device_num, parallel.pipeline_stage)
    layout = train_cell.parameter_layout_dict
    local = {p.name: tuple(p.shape) for p in train_cell.get_parameters()}
    parameters, param_bytes, optimizer_bytes = [], 0, 0
    for name, full in full_shapes.items():
        if name not in layout:
            continue  # held by another pipeline stage
        entry = layout[name]
        slice_shape = tuple(entry[2])
        moment = local.get(f"adam_m.{name}", local.get(f"moments.{name}"))
        moment_shape = tuple(moment) if moment is not None else slice_shape
        parameters.append({"name": name, "full_shape": list(full), "slice_shape": list(slice_shape),
                           "optimizer_shape": list(moment_shape),
                           "optimizer_sharded": moment_shape != slice_shape,
                           "dev_matrix": list(entry[0]), "tensor_map": list(entry[1])})
        param_bytes += _bytes(slice_shape, dtypes[name])
        optimizer_bytes += 2 * _bytes(moment_shape, "Float32")  # Adam's two fp32 moments
    stages = layer_stages(config, parallel)
    holds = sorted({_part(p["name"]) for p in parameters}, key=_part_order)
    if stages["head"] == stage:
        holds.append("head")
    return {"rank": rank, "stage": stage, "device_num": device_num, "compile_s": round(compile_s, 2),
            "holds": holds, "parameter_bytes": param_bytes, "optimizer_bytes": optimizer_bytes,
            "parameters": parameters}


def _part_order(part: str):
    if part.startswith("blocks."):
        return (1, int(part.split(".")[1]), part)
    order = {"word_embedding": 0, "position_embedding": 0, "layernorm": 2, "top_query_embedding": 3,
             "top_query_layer": 3}
    return (order.get(part, 4), 0, part)


def main(argv: list[str]) -> int:
    spec_path, report_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        report = compile_rank(spec)
        status = 0
    except Exception as error:  # noqa: BLE001 - every failure becomes one readable line in the report
        report = {"error": readable_error(error), "traceback": traceback.format_exc()}
        status = 1
    report_path.write_text(json.dumps(report))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
