"""Model cells: the shared transformer (`layers`), the families and the loss."""

from __future__ import annotations

from pangu_zoo.config import ModelConfig, get_preset
from pangu_zoo.models.causal_lm import CausalLM

# importing the families registers them in CausalLM.families, which build_model and from_pretrained look up
from pangu_zoo.models.gpt2 import GPT2LMHeadModel
from pangu_zoo.models.openpangu import PanguEmbeddedForCausalLM
from pangu_zoo.models.pangu_alpha import PanguAlphaForCausalLM


def build_model(config: ModelConfig | str, **overrides) -> CausalLM:
    """A randomly initialised model from a config or a preset name."""
    if isinstance(config, str):
        config = get_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return CausalLM.families[config.family](config)


def from_pretrained(path, **overrides) -> CausalLM:
    """Load a directory saved by `save_pretrained`, a Hugging Face GPT-2 or an openPangu-Embedded directory."""
    return CausalLM.from_pretrained(path, **overrides)


__all__ = ["CausalLM", "GPT2LMHeadModel", "PanguAlphaForCausalLM", "PanguEmbeddedForCausalLM", "build_model",
           "from_pretrained"]
