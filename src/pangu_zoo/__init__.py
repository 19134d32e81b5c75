"""MindSpore-native PanGu-alpha and GPT-2 model zoo."""

from pangu_zoo.config import ModelConfig, MoEConfig, ParallelConfig, get_preset, list_presets
from pangu_zoo.errors import PanguError

__all__ = ["ModelConfig", "ParallelConfig", "MoEConfig", "get_preset", "list_presets", "PanguError"]
__version__ = "0.1.0"
