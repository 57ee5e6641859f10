"""Host-side conversions shared by the resident modules."""

from __future__ import annotations

import numpy as np


def f32(t) -> np.ndarray:
    """A torch tensor (any float dtype, any device) or array-like as contiguous float32 numpy."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        t = t.numpy() if t.dtype.is_floating_point and t.dtype.itemsize >= 4 else t.float().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)
