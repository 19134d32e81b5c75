"""MindIR export of a model's inference graphs into the reference's serving layout.

`export_model` writes, under `<out>/serving_increment/pangu_standalone/pangu/1/`:

* `pangu_alpha_<seq>_graph.mindir`: the prefill graph (ids, positions [B, P], bias [B, 1, P, P], last index [B]
  -> next-token logits [B, V] and every layer's keys and values [B, n, P, d]);
* `pangu_alpha_1_graph.mindir`: the one-token decode graph (token, position [B], bias [B, 1, 1, T], slot
  [B, 1, T, 1], the 2L caches [B, n, T, d] -> logits [B, V] and the updated caches);
* with `eval_graph`, `pangu_alpha_<seq>_eval_graph.mindir`: full-sequence logits, which C3 scoring needs;
* `tokenizer/` (the tokenizer files) and `manifest.json` (model config, each graph's file and signature, the
  end ids, and the sha256 of every file).

Every batch, prompt and cache length is dynamic, so one file per graph serves every shape. MindSpore embeds the
parameters in each file (there is no export option that shares them between files), so each graph carries its
own copy of the weights; over 1 GiB MindSpore writes them as `<name>_variables/data_0` next to the graph.
MindSpore writes files owner-read-only: they are opened to the serving user (0644), and the folder is built
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import mindspore as ms

from pangu_zoo.errors import ConfigError

SERVING_LAYOUT = Path("serving_increment") / "pangu_standalone" / "pangu" / "1"
MANIFEST = "manifest.json"
FORMAT = "pangu-zoo-serving"
FORMAT_VERSION = 1


def graph_names(config) -> dict[str, str]:
    """Graph -> file stem, the reference's names (`pangu_alpha_1024` for prefill, `pangu_alpha_1` for decode)."""
    seq = config.max_position_embeddings
    return {"prefill": f"pangu_alpha_{seq}", "decode": "pangu_alpha_1", "forward": f"pangu_alpha_{seq}_eval"}


def signatures(config) -> dict[str, dict]:
    """Each graph's inputs and outputs as (name, dtype, shape), None for a dynamic axis."""
    n, d, layers, v = config.num_key_value_heads, config.head_dim, config.num_layers, config.vocab_size
    cache_dtype = config.compute_dtype
    caches = [(f"{kind}_{i}", cache_dtype, [None, n, None, d]) for kind in ("key", "value") for i in range(layers)]
    return {
        "prefill": {"inputs": [("input_ids", "int32", [None, None]), ("position_ids", "int32", [None, None]),
                               ("attention_bias", "float32", [None, 1, None, None]),
                               ("last_index", "int32", [None])],
                    "outputs": [("logits", "float32", [None, v])] + caches},
        "decode": {"inputs": [("input_ids", "int32", [None]), ("position_ids", "int32", [None]),
                              ("attention_bias", "float32", [None, 1, 1, None]), ("slot", "bool", [None, 1, None, 1])]
                   + caches,
                   "outputs": [("logits", "float32", [None, v])] + caches},
        "forward": {"inputs": [("input_ids", "int32", [None, None]), ("position_ids", "int32", [None, None]),
                               ("attention_bias", "float32", [None, 1, None, None])],
                    "outputs": [("logits", "float32", [None, None, v])]},
    }


def placeholders(signature: dict) -> list:
    """Tensors of a graph's input dtypes with None for each dynamic axis (a signature or a manifest entry)."""
    return [ms.Tensor(shape=shape, dtype=ms.bool_ if dtype == "bool" else getattr(ms, dtype))
            for _, dtype, shape in signature["inputs"]]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_graph(cell, signature: dict, folder: Path, stem: str) -> str:
    """Export one graph; return its `<stem>_graph.mindir` name (MindSpore names small files `<stem>.mindir`)."""
    ms.export(cell, *placeholders(signature), file_name=str(folder / stem), file_format="MINDIR")
    graph_file = folder / f"{stem}_graph.mindir"
    if not graph_file.exists():
        (folder / f"{stem}.mindir").rename(graph_file)
    return graph_file.name


def _open_to_readers(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)
    os.chmod(folder, 0o755)


# files of a model folder that are not the tokenizer's (openPangu keeps its tokenizer in the model folder)
NOT_TOKENIZER = ("config.json", "generation_config.json", "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


def _copy_tokenizer(tokenizer_path: Path, folder: Path) -> list[str]:
    target = folder / "tokenizer"
    target.mkdir()
    sources = [tokenizer_path] if tokenizer_path.is_file() else sorted(
        p for p in tokenizer_path.iterdir()
        if p.is_file() and p.name not in NOT_TOKENIZER and not p.name.endswith(WEIGHT_SUFFIXES))
    for source in sources:
        shutil.copy2(source, target / source.name)
    return [source.name for source in sources]


def export_model(model, out_root: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                 tokenizer_kind: str | None = None, eval_graph: bool = False, end_ids: tuple[int, ...] = (),
                 overwrite: bool = False) -> Path:
    """Export `model` into `<out_root>/serving_increment/pangu_standalone/pangu/1/`; return that folder."""
    from pangu_zoo.runtime import use_graph_mode

    destination = Path(out_root) / SERVING_LAYOUT
    if destination.exists() and not overwrite:
        raise ConfigError(f"{destination} already exists; remove it or pass --overwrite")
    if tokenizer_path is not None and not Path(tokenizer_path).exists():
        raise ConfigError(f"tokenizer path {tokenizer_path} does not exist")
    use_graph_mode()
    config = model.config
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=destination.parent))
    try:
        started = time.perf_counter()
        graphs, sigs = {}, signatures(config)
        wanted = ["prefill", "decode"] + (["forward"] if eval_graph else [])
        for name in wanted:
            stem = graph_names(config)[name]
            graphs[name] = {"file": _export_graph(model.graph(name), sigs[name], staging, stem),
                            "inputs": sigs[name]["inputs"], "outputs": sigs[name]["outputs"]}
        tokenizer = None
        if tokenizer_path is not None:
            tokenizer = {"kind": tokenizer_kind, "files": _copy_tokenizer(Path(tokenizer_path), staging)}
        files = {str(p.relative_to(staging)): sha256_of(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "model": config.to_dict(), "graphs": graphs,
                    "tokenizer": tokenizer, "end_ids": [int(i) for i in end_ids],
                    "export_seconds": round(time.perf_counter() - started, 2), "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        _open_to_readers(staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
