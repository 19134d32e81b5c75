"""mindformers / MSM parameter names -> this project's names (the released PanGu-alpha naming scheme).

Only the differences the reference sheet states are mapped (pangu_alpha.md §3.1, formats.md §5.2):

* mindformers keeps the blocks, `top_query_layer` and the final `layernorm` under the released names, but nests
  the word and position tables under `backbone.embedding.`;
* MSM with `load_ckpt_path` set replaces the three tables by Parameters named `word_embedding_table`,
  `position_embedding_table` and `query_embedding_table` (loaded from the released `.npy` files);
* training-only state is dropped: optimizer moments `adam_m.*` / `adam_v.*`, pipeline `accu_grads.*`,
  `global_step`, `loss_scale`, `scale_sense` and the incremental-inference buffers `key_past` / `value_past`.

Every other name passes through unchanged; `CausalLM.load_state_dict` reports what does not fit the model.
"""

from __future__ import annotations

import numpy as np

from pangu_zoo.errors import CheckpointError

WORD = "backbone.word_embedding.embedding_table"
POSITION = "backbone.position_embedding.embedding_table"
TOP_QUERY = "backbone.top_query_embedding.embedding_table"

RENAMES = {
    "backbone.embedding.word_embedding.embedding_table": WORD,
    "backbone.embedding.position_embedding.embedding_table": POSITION,
    "word_embedding_table": WORD,
    "position_embedding_table": POSITION,
    "query_embedding_table": TOP_QUERY,
}

_STATE_PREFIXES = ("adam_m.", "adam_v.", "accu_grads.")
_STATE_NAMES = ("global_step", "loss_scale", "scale_sense")
_STATE_LEAVES = ("key_past", "value_past")


def is_training_state(name: str) -> bool:
    """True for optimizer / loss-scale / step counters and the use_past KV buffers (not model weights)."""
    return (name.startswith(_STATE_PREFIXES) or name in _STATE_NAMES
            or name.rsplit(".", 1)[-1] in _STATE_LEAVES)


def map_name(name: str) -> str | None:
    """Our name for a mindformers / MSM / released name, or None when the entry is training state."""
    if is_training_state(name):
        return None
    return RENAMES.get(name, name)


def state_from_mindformers(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a mindformers-named state dict to ours and drop training state.

    Raises CheckpointError when two source names land on the same parameter (e.g. a checkpoint that holds both
    `word_embedding_table` and `backbone.embedding.word_embedding.embedding_table`).
    """
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for name, value in state.items():
        ours = map_name(name)
        if ours is None:
            continue
        if ours in out:
            raise CheckpointError(
                f"the checkpoint holds both {source[ours]!r} and {name!r}, which are the same parameter {ours!r}; "
                "remove one of them"
            )
        out[ours] = value
        source[ours] = name
    return out
