"""The `mindformers` format: one MindSpore `.ckpt` file under mindformers' parameter names, for GPT-2
(GPT2LMHeadModel) and PanGu-alpha (PanguAlphaHeadModel) (reference formats.md §2.2-2.3, §5.2).

Our names differ from mindformers' only in the word and position tables, which mindformers nests under
`backbone.embedding.`; reading also takes MSM's names and drops training state (`pangu_zoo.checkpoint.mindformers`)
the attention mask buffers that mindformers' GPT-2 converter may copy (`attention.beta`, `masked_beta`) and the
run's bookkeeping MindSpore saves beside the weights (`epoch_num`, `step_num`, `learning_rate`: names without a
dot, other than MSM's three tables).
The file carries no config: `--mode`/`--config` give the model's shape, and the tensors' dtype its param_dtype.
"""

from __future__ import annotations

import os
from pathlib import Path

from pangu_zoo.checkpoint import mindformers
from pangu_zoo.checkpoint.ckpt_stream import CkptFile, write_ckpt
from pangu_zoo.checkpoint.formats import Format, Weights, refuse_tp, register, require_config
from pangu_zoo.checkpoint.lazy import LazyWeights, param_dtype_of, spec_of, stored_as
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError

EMBEDDING_PREFIX = "backbone.embedding."
NESTED = {mindformers.WORD: EMBEDDING_PREFIX + "word_embedding.embedding_table",
          mindformers.POSITION: EMBEDDING_PREFIX + "position_embedding.embedding_table"}
_MASK_BUFFERS = (".attention.beta", ".attention.masked_beta")


def mindformers_name(ours: str) -> str:
    return NESTED.get(ours, ours)


def read(path: str | os.PathLike, *, config_hint: ModelConfig | None = None) -> tuple[ModelConfig, LazyWeights]:
    config = require_config(config_hint, "mindformers")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mindformers checkpoint {path} does not exist (give the .ckpt file)")
    source = CkptFile(path)
    specs, origin = {}, {}
    for name, spec in source.specs.items():
        ours = mindformers.map_name(name)
        if ours is None or name.endswith(_MASK_BUFFERS) or ("." not in name and name not in mindformers.RENAMES):
            continue
        if ours in specs:
            raise CheckpointError(f"{path} holds both {origin[ours]!r} and {name!r}, which are the same parameter "
                                  f"{ours!r}; remove one of them")
        specs[ours], origin[ours] = spec, name
    weights = LazyWeights(specs, lambda ours: source.read(origin[ours]))
    return config.replace(param_dtype=param_dtype_of(weights)), weights


def write(config: ModelConfig, weights: Weights, path: str | os.PathLike, *, tp: int = 1,
          tokenizer_path: str | os.PathLike | None = None) -> None:
    refuse_tp(tp, "mindformers")
    if tokenizer_path is not None:
        raise CheckpointError("a mindformers checkpoint is one .ckpt file, with no place for tokenizer files")
    ours = {mindformers_name(name): name for name in weights}
    specs = [(theirs, stored_as(spec_of(weights, name), config.param_dtype)) for theirs, name in ours.items()]
    write_ckpt(path, specs, lambda theirs: weights[ours[theirs]])


FORMAT = register(Format("mindformers", "one MindSpore .ckpt with mindformers' parameter names (GPT-2, PanGu-alpha)",
                         read, write))
