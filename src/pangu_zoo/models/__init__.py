"""Model cells: the shared transformer (`layers`), the two families and the loss."""

from __future__ import annotations

from pangu_zoo.config import ModelConfig, get_preset
from pangu_zoo.models.causal_lm import CausalLM
from pangu_zoo.models.gpt2 import GPT2LMHeadModel
from pangu_zoo.models.pangu_alpha import PanguAlphaForCausalLM

MODEL_CLASSES = {"pangu_alpha": PanguAlphaForCausalLM, "gpt2": GPT2LMHeadModel}


def build_model(config: ModelConfig | str, **overrides) -> CausalLM:
    """A randomly initialised model from a config or a preset name."""
    if isinstance(config, str):
        config = get_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return MODEL_CLASSES[config.family](config)


def from_pretrained(path, **overrides) -> CausalLM:
    """Load a directory saved by `save_pretrained` or a Hugging Face GPT-2 directory."""
    from pangu_zoo.checkpoint.pretrained import from_pretrained as _load

    return _load(path, **overrides)


__all__ = ["CausalLM", "GPT2LMHeadModel", "PanguAlphaForCausalLM", "build_model", "from_pretrained"]
