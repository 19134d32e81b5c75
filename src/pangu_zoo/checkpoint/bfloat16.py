"""bf16 without a bf16 NumPy dtype: values are held as fp32 (every bf16 value is one) and stored as uint16 bits."""

from __future__ import annotations

import numpy as np


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """The bf16 bit patterns nearest to `values` (rounding half to even, as torch and MindSpore do)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():  # keep NaNs NaN (rounding could carry them into infinity), quieted
        out[nan] = (bits[nan] >> np.uint32(16)).astype(np.uint16) | np.uint16(0x0040)
    return out


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """fp32 values of bf16 bit patterns (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to_bf16(values: np.ndarray) -> np.ndarray:
    """`values` rounded to bf16 precision, as fp32."""
    return from_bf16_bits(to_bf16_bits(values))
