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


@pytest.fixture(scope="session")
def tiny_pangu():
    from pangu_zoo.models import build_model

    np.random.seed(0)
    import mindspore as ms

    ms.set_seed(0)
    return build_model("pangu_alpha_tiny", vocab_size=1000, num_layers=3, dropout_rate=0.0,
                       max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_gpt2():
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(1)
    return build_model("gpt2-tiny", vocab_size=1000, dropout_rate=0.0, max_position_embeddings=128,
                       eod_token_id=999, pad_token_id=999, eos_token_id=999)
