"""This project's own heads format: safetensors with ``head.{k}.block.{l}.w_in|b_in|w_out``, an optional
``head.{k}.proj`` and, for token-conditioned heads (format version 2), ``head.{k}.cond.{j}``; ``draft_vocab``,
``answers``, ``reference`` and ``reference_prompt_tokens`` as int32 tensors; JSON metadata under the key
``llama_medusa`` (docs/FORMATS.md)."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import numpy as np

FORMAT_KEY = "llama_medusa"
FORMAT_VERSION = 2  # 2: token-conditioned heads (head.{k}.cond.{j}); files without them are still written as 1


def write(heads, path: str, extra_meta: Optional[Dict[str, Any]] = None, half: bool = False) -> None:
    """Writes `heads` (a MedusaHeads); half=True stores weights as float16 (loaded back as float32)."""
    from safetensors.numpy import save_file

    tensors: Dict[str, np.ndarray] = {}
    for k, head in enumerate(heads.blocks):
        for l, (w_in, b_in, w_out) in enumerate(head):
            tensors[f"head.{k}.block.{l}.w_in"] = np.ascontiguousarray(w_in)
            if b_in is not None:
                tensors[f"head.{k}.block.{l}.b_in"] = np.ascontiguousarray(b_in)
            if w_out is not None:
                tensors[f"head.{k}.block.{l}.w_out"] = np.ascontiguousarray(w_out)
        if heads.proj[k] is not None:
            tensors[f"head.{k}.proj"] = np.ascontiguousarray(heads.proj[k])
        for j, u in enumerate(heads.cond[k] if heads.cond else []):
            tensors[f"head.{k}.cond.{j}"] = np.ascontiguousarray(u)
    if heads.draft_vocab is not None:
        tensors["draft_vocab"] = np.ascontiguousarray(heads.draft_vocab, dtype=np.int32)
    if heads.answers is not None:
        tensors["answers"] = np.ascontiguousarray(heads.answers, dtype=np.int32)
    if heads.reference is not None:
        tensors["reference"] = np.ascontiguousarray(heads.reference, dtype=np.int32)
        tensors["reference_prompt_tokens"] = np.ascontiguousarray(heads.reference_prompt_tokens, dtype=np.int32)
    if half:
        tensors = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
    meta = dict(heads.meta)
    meta.update(extra_meta or {})
    meta.update(
        version=FORMAT_VERSION if heads.conditioned else 1,
        conditioning="tokens" if heads.conditioned else "none",
        n_heads=heads.n_heads,
        hidden_size=heads.hidden_size,
        projection="shared" if heads.shared_projection else "own",
    )
    save_file(tensors, path, metadata={FORMAT_KEY: json.dumps(meta)})


def meta_of(path: str, text: str) -> Dict[str, Any]:
    """The llama-medusa metadata of a heads file, checked for what loading and `auto` read from it."""
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: its {FORMAT_KEY} metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {FORMAT_KEY} metadata must be a JSON object, got {type(meta).__name__}")
    for key in ("n_heads", "hidden_size"):
        v = meta.get(key)
        if type(v) is not int or v < 1:
            raise ValueError(f"{path}: its {FORMAT_KEY} metadata needs {key} as a positive integer, got {v!r}")
    if "version" in meta and type(meta["version"]) is not int:
        raise ValueError(f"{path}: its {FORMAT_KEY} metadata has version {meta['version']!r}, not an integer")
    acc = meta.get("top_k_accuracy")
    if acc is not None:  # cumulative top-1..k hit rates per head: `auto` sizes its tree from them
        try:
            a = np.asarray(acc, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if (a is None or a.ndim != 2 or a.shape[0] < meta["n_heads"] or a.shape[1] == 0
                or not np.all((a >= 0) & (a <= 1)) or np.any(np.diff(a, axis=1) < 0)):
            raise ValueError(f"{path}: its top_k_accuracy must be a row per head ({meta['n_heads']}) of "
                             "cumulative top-1..k hit rates, non-decreasing, within [0, 1]")
    return meta


def parts(path: str, t: Dict[str, np.ndarray], meta: Dict[str, Any], draft_vocab=None, answers=None,
          reference=(None, None)) -> Dict[str, Any]:
    """MedusaHeads fields of a file in this format."""
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: heads format version {meta.get('version')} is newer than this llama-medusa reads")
    n = int(meta["n_heads"])
    blocks, proj, cond = [], [], []
    for k in range(n):
        us, j = [], 0
        while f"head.{k}.cond.{j}" in t:
            us.append(t[f"head.{k}.cond.{j}"])
            j += 1
        cond.append(us)
        head, l = [], 0
        while f"head.{k}.block.{l}.w_in" in t:
            pre = f"head.{k}.block.{l}."
            head.append((t[pre + "w_in"], t.get(pre + "b_in"), t.get(pre + "w_out")))
            l += 1
        blocks.append(head)
        proj.append(t.get(f"head.{k}.proj"))
        if not head and proj[-1] is None:
            raise ValueError(f"{path}: head {k} has no tensors")
    return dict(blocks=blocks, proj=proj, hidden_size=int(meta["hidden_size"]), source=path, format="llama-medusa",
                meta=meta, draft_vocab=draft_vocab, cond=cond, answers=answers, reference=reference[0],
                reference_prompt_tokens=reference[1])
