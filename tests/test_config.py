"""Presets, analytic parameter counts and config validation."""

import numpy as np
import pytest

from pangu_zoo.config import ModelConfig, ParallelConfig, count_parameters, get_preset, list_presets
from pangu_zoo.errors import ConfigError

# Parameter counts of the released GPT-2 checkpoints (tied head, no buffers).
GPT2_KNOWN = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
              "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name,expected", GPT2_KNOWN.items())
def test_gpt2_parameter_counts_match_released_models(name, expected):
    assert count_parameters(get_preset(name)) == expected


def test_pangu_2_6b_count_matches_reference_estimate():
    # reference §2: 32 layers x (12 h^2 + 13 h) + 40000 h + 2 x 1024 h + final LN
    h = 2560
    by_hand = 32 * (12 * h * h + 13 * h) + 40000 * h + 2 * 1024 * h + 2 * h
    assert count_parameters(get_preset("2.6B")) == by_hand
    assert count_parameters(get_preset("2.6B")) == pytest.approx(2.63e9, rel=0.005)


@pytest.mark.parametrize("name,approx", [("13B", 13.1e9), ("200B", 207e9), ("350m", 0.35e9)])
def test_pangu_large_presets_are_near_their_names(name, approx):
    assert count_parameters(get_preset(name)) == pytest.approx(approx, rel=0.05)


@pytest.mark.parametrize("name", ["pangu_alpha_tiny", "gpt2-tiny"])
def test_analytic_count_equals_built_model(name):
    from pangu_zoo.models import build_model

    model = build_model(name)
    built = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    assert count_parameters(model.config) == built


def test_every_preset_is_valid_and_counted():
    for name in list_presets():
        config = get_preset(name)
        assert count_parameters(config) > 0
        assert config.hidden_size % config.num_heads == 0


def test_reference_mode_names_are_aliases():
    assert get_preset("2.6B") == get_preset("pangu_alpha_2.6b")
    assert get_preset("13B").num_blocks == 39
    assert get_preset("gpt2").num_blocks == 12


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'gpt5'.*gpt2-medium"):
        get_preset("gpt5")


@pytest.mark.parametrize("changes,message", [
    (dict(hidden_size=100, num_heads=3), "multiple of num_heads"),
    (dict(family="bert"), "unknown model family"),
    (dict(param_dtype="fp64"), "unknown dtype"),
    (dict(eos_token_id=50000), "outside the vocabulary"),
    (dict(hidden_act="relu"), "not supported"),
])
def test_invalid_configs_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_config_round_trips_through_dict():
    config = get_preset("gpt2-medium", param_dtype="fp16")
    assert config.param_dtype == "float16"
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({**config.to_dict(), "n_embd": 3})


def test_parallel_config_device_num():
    assert ParallelConfig(data_parallel=2, model_parallel=4, pipeline_stage=2).device_num == 16
    with pytest.raises(ConfigError):
        ParallelConfig(model_parallel=0)
