"""FasterDecoding/Medusa's heads: ``medusa_lm_head.safetensors`` (+ ``config.json`` beside it), keys
``{i}.{j}.linear.weight|bias`` and ``{i}.{L}.weight`` (or the same under ``medusa_head.`` in a full model). Heads
are counted from the tensors: released configs under-report them."""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np


def parts(path: str, t: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """FasterDecoding/Medusa: {i}.{j}.linear.weight/bias for j < L, {i}.{L}.weight the head's own lm_head."""
    prefix = "medusa_head." if any(k.startswith("medusa_head.") for k in t) else ""
    t = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}
    cfg_path = os.path.join(os.path.dirname(path), "config.json")
    cfg = {}
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    blocks, proj = [], []
    k = 0
    while f"{k}.0.linear.weight" in t or f"{k}.0.weight" in t:
        head, l = [], 0
        while f"{k}.{l}.linear.weight" in t:
            head.append((t[f"{k}.{l}.linear.weight"], t.get(f"{k}.{l}.linear.bias"), None))
            l += 1
        blocks.append(head)
        proj.append(t.get(f"{k}.{l}.weight"))  # absent in "version 2" checkpoints: shared lm_head
        k += 1
    if not blocks:
        sample = ", ".join(sorted(t)[:5]) or "none"
        raise ValueError(
            f"{path}: no Medusa heads found (expected keys like '0.0.linear.weight'; this file has: {sample})"
        )
    hidden = blocks[0][0][0].shape[1] if blocks[0] else proj[0].shape[1]
    n_cfg = cfg.get("medusa_num_heads")
    meta = {"medusa_config": cfg}
    if n_cfg is not None and int(n_cfg) != len(blocks):
        meta["note"] = f"config.json says {n_cfg} heads, the weights hold {len(blocks)}; using the weights"
    return dict(blocks=blocks, proj=proj, hidden_size=hidden, source=path, format="medusa", meta=meta)

