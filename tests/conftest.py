"""Shared fixtures: paths to the real data sets and small random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing")
    return path


def _pristine(model):
    """A fixture for one test: the session's model, reset to its initial weights and one-device cache write
    before the test and after it, so no test sees what another one changed (weights, flags, graphs)."""
    weights = {name: value.copy() for name, value in model.state_dict().items()}
    attentions = [block.attention for block in model.backbone.blocks]
    if model.backbone.has_top_query:
        attentions.append(model.backbone.top_query_layer.attention)

    def reset():
        model.load_state_dict(weights)
        if any(attention.sharded_cache_write for attention in attentions):
            for attention in attentions:
                attention.sharded_cache_write = False
            model.set_graph_wrapper(None)  # rebuild the graphs without the flag
        return model
    return reset


@pytest.fixture(scope="session")
def _tiny_pangu_reset():
    from pangu_zoo.models import build_model

    np.random.seed(0)
    import mindspore as ms

    ms.set_seed(0)
    return _pristine(build_model("pangu_alpha_tiny", vocab_size=1000, num_layers=3, dropout_rate=0.0,
                                 max_position_embeddings=128))


@pytest.fixture(scope="session")
def _tiny_gpt2_reset():
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(1)
    return _pristine(build_model("gpt2-tiny", vocab_size=1000, dropout_rate=0.0, max_position_embeddings=128,
                                 eod_token_id=999, pad_token_id=999, eos_token_id=999))


@pytest.fixture
def tiny_pangu(_tiny_pangu_reset):
    yield _tiny_pangu_reset()
    _tiny_pangu_reset()


@pytest.fixture
def tiny_gpt2(_tiny_gpt2_reset):
    yield _tiny_gpt2_reset()
    _tiny_gpt2_reset()


def randomize_weights(model, seed: int, scale: float, vector_scale: float | None = None):
    """Give every parameter of `model` a random value (LayerNorm gains around 1), so that no term can hide;
    `vector_scale` for 1-D parameters (default `scale`). Returns the model."""
    rng = np.random.default_rng(seed)
    small = scale if vector_scale is None else vector_scale
    model.load_state_dict({name: (rng.standard_normal(v.shape) * (scale if v.ndim > 1 else small)
                                  + (1.0 if "gamma" in name else 0.0)).astype(np.float32)
                           for name, v in model.state_dict().items()})
    return model
