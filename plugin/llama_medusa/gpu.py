"""The GPU module (`_gpu`, built from hip/ when nvcc or hipcc is found at install time), if it is usable here."""
from __future__ import annotations

from typing import Optional


def module():
    """The `_gpu` extension, or None when it was not built (no GPU compiler at install time)."""
    try:
        from . import _gpu
    except ImportError:
        return None
    return _gpu


def available() -> bool:
    """True when the GPU module is built AND a device answers (the module loads without one; it then reports 0)."""
    g = module()
    return g is not None and g.device_count() > 0


def why_not() -> Optional[str]:
    g = module()
    if g is None:
        return ("the GPU module is not built: reinstall with nvcc or hipcc on PATH "
                "(CMAKE_ARGS='-DMEDUSA_GPU=CUDA' or '-DMEDUSA_GPU=HIP' pip install .)")
    if g.device_count() == 0:
        return f"the GPU module ({g.backend}) is built but no device is visible"
    return None
