"""GPT-2: the shared transformer stack without the top-query layer."""

from pangu_zoo.models.causal_lm import CausalLM


class GPT2LMHeadModel(CausalLM):
    """GPT-2 language model, named with the same scheme as PanGu-alpha (`backbone.blocks.{i}...`)."""

    family = "gpt2"
