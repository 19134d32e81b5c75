"""An exported folder as a model: the MindIR graphs run by `mindspore.nn.GraphCell`, with no model code.

`ExportedModel` offers what inference needs of a model (`config`, `graph(name)`, `check_input_ids`,
`forward_logits`, `generate`), so the KV-cache decoder, generation and C3 scoring run on it unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mindspore as ms
from mindspore import nn

from pangu_zoo.config import config_from_dict
from pangu_zoo.errors import CheckpointError
from pangu_zoo.models.causal_lm import CausalLM
from pangu_zoo.serving.export import FORMAT, MANIFEST, SERVING_LAYOUT, placeholders, sha256_of


def find_export(path: str | os.PathLike) -> Path:
    """The folder holding `manifest.json`: `path` itself or `path/serving_increment/pangu_standalone/pangu/1`."""
    path = Path(path)
    for candidate in (path, path / SERVING_LAYOUT):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise CheckpointError(f"{path} holds no exported model ({MANIFEST} not found there or under {SERVING_LAYOUT})")


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder / MANIFEST} cannot be read: {error}") from error
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder / MANIFEST} is not a {FORMAT} manifest")
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    """Raise unless every file listed in the manifest is present with its sha256."""
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in the manifest but missing")
        if sha256_of(path) != expected:
            raise CheckpointError(f"{path} does not match its sha256 in the manifest (damaged or replaced)")


# Graphs compiled once for every input shape. A graph compiled for fixed shapes runs faster (GPT-2 small decode at
# batch 11: 64 against 79 ms) but compiles again, 0.3-3 s, at each new shape. Prompts come in many (batch, length)
# shapes, so prefill and scoring are compiled for dynamic shapes; decode, the hot loop, has one shape per batch size,
# which the engine compiles before it serves.
DYNAMIC_GRAPHS = ("prefill", "forward")


class ExportedModel:
    """The graphs of an exported folder behind the model interface that inference uses."""

    # the model's host-side methods need only `config`, `graph(name)` and each other
    check_input_ids = CausalLM.check_input_ids
    forward_logits = CausalLM.forward_logits
    generate = CausalLM.generate

    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        self.folder = find_export(path)
        self.manifest = read_manifest(self.folder)
        if verify:
            verify_files(self.folder, self.manifest)
        self.config = config_from_dict(self.manifest["model"])
        self.end_ids = tuple(self.manifest.get("end_ids", ()))
        self._graphs: dict[str, nn.GraphCell] = {}

    def graph(self, name: str) -> nn.GraphCell:
        if name not in self._graphs:
            entry = self.manifest["graphs"].get(name)
            if entry is None:
                raise CheckpointError(f"{self.folder} has no {name} graph; export with --eval_task c3 for scoring")
            cell = nn.GraphCell(ms.load(str(self.folder / entry["file"])))
            if name in DYNAMIC_GRAPHS:
                cell.set_inputs(*placeholders(entry))
            self._graphs[name] = cell
        return self._graphs[name]

    @property
    def tokenizer_dir(self) -> Path | None:
        info = self.manifest.get("tokenizer")
        return self.folder / "tokenizer" if info else None

    @property
    def tokenizer_kind(self) -> str | None:
        info = self.manifest.get("tokenizer")
        return info.get("kind") if info else None
