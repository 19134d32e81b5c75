"""openPangu-Embedded: the decoder of `openpangu_layers` behind the `CausalLM` interface (generate, graphs, loss)."""

from pangu_zoo.models.causal_lm import CausalLM
from pangu_zoo.models.openpangu_layers import OpenPanguBackbone


class PanguEmbeddedForCausalLM(CausalLM):
    """openPangu-Embedded language model; parameters keep Hugging Face's names under `backbone.`
    (`backbone.model.layers.{i}.self_attn.q_proj.weight`, `backbone.lm_head.weight`, ...)."""

    family = "openpangu"
    backbone_class = OpenPanguBackbone
