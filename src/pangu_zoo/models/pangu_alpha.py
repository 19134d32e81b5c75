"""PanGu-alpha: the shared transformer plus the top-query layer (see `layers.Backbone`)."""

from pangu_zoo.models.causal_lm import CausalLM


class PanguAlphaForCausalLM(CausalLM):
    """PanGu-alpha language model with released parameter names (`backbone.top_query_layer.*`, ...)."""

    family = "pangu_alpha"
