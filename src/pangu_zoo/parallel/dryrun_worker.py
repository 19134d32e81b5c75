"""One rank of a dry run: compile the sharded training step in simulation mode and report its layout.

Run by `pangu dryrun` in a subprocess whose environment comes from `pangu_zoo.parallel.simenv` (stub CUDA,
`MS_SIMULATION_LEVEL=0`, `RANK_ID`, `RANK_SIZE`):

    python -m pangu_zoo.parallel.dryrun_worker SPEC.json REPORT.json

SPEC holds the model config, the parallel config, device_num, batch and optimizer settings. The step is
built by `pangu_zoo.training.build`, the same code `train.py` runs. REPORT receives the per-rank layout, or
`{"error": one readable line}` with exit status 1.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np

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
    if "blocks" in parts or "layers" in parts:  # openPangu's decoder layers count as blocks
        i = parts.index("blocks" if "blocks" in parts else "layers")
        return f"blocks.{parts[i + 1]}"
    if "backbone" in parts:
        rest = parts[parts.index("backbone") + 1:]
        return rest[1] if rest[0] == "model" and len(rest) > 2 else rest[0]  # openPangu: backbone.model.norm...
    return parts[0]


def _bytes(shape, dtype: str) -> int:
    return math.prod(shape) * ITEM_BYTES.get(dtype, 4)


def compile_rank(spec: dict) -> dict:
    # the global-norm all-reduce is looked up in the compiled graph's validate IR (set before MindSpore loads)
    os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"
    import mindspore as ms
    from mindspore.common.initializer import One
    from mindspore.communication import get_rank, init

    from pangu_zoo.config import ParallelConfig, config_from_dict
    from pangu_zoo.models import build_model
    from pangu_zoo.parallel.context import configure_parallel
    from pangu_zoo.parallel.strategy import layer_stages, rank_stage
    from pangu_zoo.runtime import use_graph_mode
    from pangu_zoo.training.build import build_train_step
    from pangu_zoo.training.schedule import WarmupCosineLR

    use_graph_mode()
    ms.set_device("GPU")
    init()
    config = config_from_dict(spec["model"])
    parallel = ParallelConfig(**spec["parallel"])
    device_num = spec["device_num"]
    configure_parallel(parallel, device_num, "semi_auto_parallel",
                       optimizer_shard_threshold_kb=spec.get("optimizer_shard_threshold_kb"))
    model = build_model(config)
    if spec.get("lora"):  # only the adapters train, so only they have gradients and optimizer state
        from pangu_zoo.lora_config import LoraConfig
        from pangu_zoo.models.lora import apply_lora_config

        apply_lora_config(model, LoraConfig.from_dict(spec["lora"]))
    full_shapes = {p.name: tuple(p.shape) for p in model.trainable_params()}
    dtypes = {p.name: str(p.dtype) for p in model.trainable_params()}
    lr = WarmupCosineLR(1e-4, 1e-6, 100, 1000)
    train_cell = build_train_step(model, parallel, spec.get("optimizer", "adam"), lr,
                                  opt_offload=spec.get("opt_offload", False))

    batch, seq = spec["global_batch"], config.max_position_embeddings
    if spec.get("stage") == "sft":
        inputs = tuple(ms.Tensor(column) for column in packed_sft_batch(batch, seq, config.pad_token_id))
    else:
        inputs = (ms.Tensor(shape=(batch, seq + 1), dtype=ms.int32, init=One()),
                  ms.Tensor(shape=(batch, seq), dtype=ms.int32, init=One()),
                  ms.Tensor(shape=(batch, seq, seq), dtype=ms.int32, init=One()),
                  ms.Tensor(shape=(batch, seq), dtype=ms.float32, init=One()))
    start = time.perf_counter()
    train_cell.set_train(True)
    ir_dir = Path.cwd() / "ir" / "train"
    ms.set_context(save_graphs=1, save_graphs_path=str(ir_dir))
    train_cell.compile(*inputs)
    compile_s = time.perf_counter() - start
    ms.set_context(save_graphs=0)
    norm_groups = global_norm_groups(ir_dir)
    collectives = collective_counts(ir_dir)
    if not norm_groups:
        raise RuntimeError("the compiled training step has no all-reduce of the gradient norm")

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
        check_norm_count(name, full, moment_shape, dtypes[name], parallel, spec)
        optimizer_bytes += 2 * _bytes(moment_shape, "Float32")  # Adam's two fp32 moments
    stages = layer_stages(config, parallel)
    holds = sorted({_part(p["name"]) for p in parameters}, key=_part_order)
    if stages["head"] == stage:
        holds.append("head")
    return {"rank": rank, "stage": stage, "device_num": device_num, "compile_s": round(compile_s, 2),
            "holds": holds, "parameter_bytes": param_bytes, "optimizer_bytes": optimizer_bytes,
            "global_norm_allreduce": norm_groups, "collectives": collectives,
            "moe_layers": sum(block.use_moe for i, block in enumerate(model.backbone.blocks)
                              if stages[f"blocks.{i}"] == stage) if model.backbone.moe else 0,
            "parameters": parameters}


def _validate_ir(ir_dir: Path) -> str:
    dumps = sorted(ir_dir.rglob("*validate*.ir"), key=lambda path: path.stat().st_mtime)
    if not dumps:
        raise RuntimeError("no IR dump of the training step was written")
    return dumps[-1].read_text()


def collective_counts(ir_dir: Path) -> dict[str, int]:
    """How many of each collective the compiled training step runs (forward and backward), from its validate IR."""
    text = _validate_ir(ir_dir)
    names = ("AlltoAll", "AllReduce", "AllGather", "ReduceScatter", "Send", "Receive")
    counts = {name: len(re.findall(rf"= {name}\(", text)) for name in names}
    # --opt_offload: the optimizer's updates, each pinned to the host CPU
    host = [line for line in text.splitlines() if "FusedCastAdamWeightDecay(" in line]
    counts["host_optimizer_updates"] = sum('primitive_target: "CPU"' in line for line in host)
    return counts


def packed_sft_batch(batch: int, seq: int, pad_id: int) -> tuple:
    """A batch of packed instruction rows (three samples and padding per row, prompts untrained) turned into the
    training columns by the same transform `train.py --stage sft` applies: restarted positions, block-diagonal
    int8 attention mask, loss mask from the labels."""
    from pangu_zoo.data.sft.dataset import SftBatchTransform
    from pangu_zoo.data.sft.labels import IGNORE_INDEX

    ids = np.full((batch, seq), pad_id, np.int32)
    samples = np.zeros((batch, seq), np.int32)
    labels = np.full((batch, seq), IGNORE_INDEX, np.int32)
    bounds = [0, seq // 3, 2 * seq // 3, seq - max(seq // 8, 1)]
    for number, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False), start=1):
        ids[:, start:end] = np.arange(start, end) % 97 + 10
        samples[:, start:end] = number
        answer = (start + end) // 2
        labels[:, answer:end] = ids[:, answer:end]
    return SftBatchTransform(pad_id)(ids, samples, labels)


def global_norm_groups(ir_dir: Path) -> list[str]:
    """The communication groups of the gradient-norm all-reduces in the compiled graph's validate IR dump."""
    lines = [line for line in _validate_ir(ir_dir).splitlines() if "AllReduce" in line and "global_norm" in line]
    return [m.group(1) for line in lines for m in [re.search(r'group: "([^"]+)"', line)] if m]


def check_norm_count(name: str, full_shape, gradient_shape, dtype: str, parallel, spec: dict) -> None:
    """Raise unless the global norm's counting rule agrees with the compiled layout of this parameter."""
    from pangu_zoo.parallel.grad_norm import compiled_copies, gradient_copies, stage_shared

    threshold = spec.get("optimizer_shard_threshold_kb")
    expected = gradient_copies(name, tuple(full_shape), ITEM_BYTES.get(dtype, 4), parallel, threshold,
                               stage_shared(name, parallel))
    compiled = compiled_copies(full_shape, gradient_shape, parallel)
    if expected != compiled:
        raise RuntimeError(f"global-norm counting: {name} is counted as held by {expected} rank(s) of a stage, but the "
                           f"compiled layout gives {compiled} (gradient slice {list(gradient_shape)})")


def _part_order(part: str):
    if part.startswith("blocks."):
        return (1, int(part.split(".")[1]), part)
    order = {"word_embedding": 0, "position_embedding": 0, "embed_tokens": 0, "layernorm": 2, "norm": 2,
             "top_query_embedding": 3, "top_query_layer": 3}
    return (order.get(part, 4), 0, part)


def graph_io_shapes(ir_text: str, num_inputs: int) -> dict:
    """Per-rank input and output shapes of a compiled graph, read from its `validate` IR dump: inputs from the
    `%paraN` lines (the first `num_inputs` are the graph's arguments), outputs from the node it returns."""
    inputs = [tuple(int(v) for v in re.findall(r"\d+", shape))
              for shape in re.findall(r"^%para\d+_\w+: <Tensor\[\w+\], \(([\d, ]*)\)>", ir_text, re.MULTILINE)]
    returned = re.findall(r"^\s*Return\(%(\d+)\)", ir_text, re.MULTILINE)
    if len(inputs) < num_inputs or not returned:
        raise RuntimeError("the compiled graph's IR dump has no inputs or no return node")
    node = re.search(rf"^\s*%{returned[-1]}\(.*\n\s*: .*-> \((.*)$", ir_text, re.MULTILINE)
    result = node.group(1) if node else ""
    tuple_shapes = re.search(r"TupleShape\(((?:\([\d, ]*\)(?:, )?)*)\)", result)
    single = re.match(r"<Tensor\[\w+\], (\([\d, ]*\))>", result)
    if not (tuple_shapes or single):
        raise RuntimeError("the compiled graph's IR dump does not show the shapes it returns")
    outputs = [tuple(int(v) for v in re.findall(r"\d+", shape))
               for shape in re.findall(r"\(([\d, ]*)\)", (tuple_shapes or single).group(1))]
    return {"inputs": [list(shape) for shape in inputs[:num_inputs]], "outputs": [list(shape) for shape in outputs]}


def which_part(full, local) -> dict:
    """Which equal slice of `full` the values `local` are: {'axis': a, 'part': k}, {} when whole, or None."""
    if full.shape == local.shape:
        return {} if np.array_equal(full, local) else None
    axes = [a for a in range(full.ndim) if full.shape[a] != local.shape[a]]
    if len(axes) != 1:
        return None
    axis, size = axes[0], local.shape[axes[0]]
    for part in range(full.shape[axis] // size):
        if np.array_equal(np.take(full, range(part * size, (part + 1) * size), axis=axis), local):
            return {"axis": axis, "part": part}
    return None


def compile_inference_rank(spec: dict) -> dict:
    """Compile the forward, prefill and decode graphs of the sharded predict plan on this rank; report each
    graph's per-rank input/output shapes (the KV cache must keep one layout from prefill to decode), every
    parameter's slice and, with `check_weights`, which slice of the loaded weights the rank holds."""
    # the layouts are read from IR dumps, of which only the validate pass is needed (set before MindSpore loads)
    os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"
    import mindspore as ms
    from mindspore.common.initializer import One
    from mindspore.communication import get_rank, init

    from pangu_zoo.config import config_from_dict
    from pangu_zoo.models import build_model
    from pangu_zoo.parallel.inference import distribute_for_inference
    from pangu_zoo.runtime import use_graph_mode

    use_graph_mode()
    ms.set_device("GPU")
    init()
    rank, device_num = get_rank(), spec["device_num"]
    config = config_from_dict(spec["model"])
    model = build_model(config, dropout_rate=0.0)
    full = {}
    if spec.get("check_weights"):
        for index, (name, param) in enumerate(model.parameters_and_names()):
            full[name] = np.random.default_rng(index).standard_normal(param.shape).astype(np.float32)
            param.set_data(ms.Tensor(full[name]).astype(param.dtype))
    full_shapes = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    parallel = distribute_for_inference(model, device_num, rank)
    mp, layers = parallel.model_parallel, config.num_layers
    batch, seq = spec["batch"], config.max_position_embeddings
    n, d = config.num_key_value_heads, config.head_dim  # the cache holds key/value heads

    def shaped(shape, dtype=ms.int32):
        return ms.Tensor(shape=shape, dtype=dtype, init=One())

    whole_bias, whole_slot = np.zeros((batch, 1, 1, seq), np.float32), np.zeros((batch, 1, seq, 1), bool)
    graph_inputs = {
        "forward": (shaped((batch, seq)), shaped((batch, seq)), shaped((batch, 1, seq, seq), ms.float32)),
        "prefill": (shaped((batch, seq)), shaped((batch, seq)), shaped((batch, 1, seq, seq), ms.float32),
                    shaped((batch,))),
        "decode": (shaped((batch,)), shaped((batch,)), ms.Tensor(whole_bias), ms.Tensor(whole_slot))
                  + tuple(shaped((batch, n // mp, seq, d), ms.float32) for _ in range(2 * layers)),
    }
    graphs = {}
    for name, inputs in graph_inputs.items():
        ir_dir = Path.cwd() / "ir" / name
        ms.set_context(save_graphs=1, save_graphs_path=str(ir_dir))
        start = time.perf_counter()
        model.graph(name).compile(*inputs)
        graphs[name] = {"compile_s": round(time.perf_counter() - start, 2)}
        dumps = sorted(ir_dir.rglob("*validate*.ir"), key=lambda path: path.stat().st_mtime)
        if not dumps:
            raise RuntimeError(f"no IR dump of the {name} graph was written")
        graphs[name].update(graph_io_shapes(dumps[-1].read_text(), len(inputs)))
        ms.set_context(save_graphs=0)
    check_cache_layout(graphs, layers)

    parameters, param_bytes = [], 0
    layout = model.graph("decode").cell.parameter_layout_dict
    for name, param in model.parameters_and_names():
        slice_shape = tuple(layout[name][2]) if name in layout else full_shapes[name]
        entry = {"name": name, "full_shape": list(full_shapes[name]), "slice_shape": list(slice_shape)}
        if full:
            entry["holds"] = which_part(full[name], param.asnumpy().astype(np.float32))
        parameters.append(entry)
        param_bytes += _bytes(slice_shape, str(param.dtype))
    return {"rank": rank, "stage": 0, "device_num": device_num, "run_type": "predict",
            "compile_s": round(sum(g["compile_s"] for g in graphs.values()), 2), "graphs": graphs,
            "holds": ["every layer, heads split"], "parameter_bytes": param_bytes, "optimizer_bytes": 0,
            "parameters": parameters}


def check_cache_layout(graphs: dict, num_layers: int) -> None:
    """Raise unless prefill returns, and decode takes and returns, the KV cache in one per-rank layout."""
    cache_in = graphs["decode"]["inputs"][4:]
    cache_out = graphs["decode"]["outputs"][1:]
    prefill_out = graphs["prefill"]["outputs"][1:]
    if len(cache_in) != 2 * num_layers or cache_in != cache_out:
        raise RuntimeError(f"decode takes the cache as {cache_in[:1]} per rank but returns {cache_out[:1]}")
    if [s[:2] + s[3:] for s in prefill_out] != [s[:2] + s[3:] for s in cache_in]:
        raise RuntimeError(f"prefill returns the cache as {prefill_out[:1]} per rank, decode takes {cache_in[:1]}")


def main(argv: list[str]) -> int:
    spec_path, report_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        report = compile_inference_rank(spec) if spec.get("run_type") == "predict" else compile_rank(spec)
        status = 0
    except Exception as error:  # noqa: BLE001 - every failure becomes one readable line in the report
        report = {"error": readable_error(error), "traceback": traceback.format_exc()}
        status = 1
    report_path.write_text(json.dumps(report))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
