"""Medusa heads: one in-memory form, three file formats, and the native engine that evaluates them.

In memory a head is a list of residual blocks ``x <- x + W_out . SiLU(W_in . x + b_in)`` followed by a vocabulary
projection, either its own ``[vocab, hidden]`` matrix or the backbone's output matrix shared by all heads.
FasterDecoding/Medusa's ResBlock is the block without W_out; MedusaBitNet's is the one without a bias.

File formats (detected from the bytes, not the name):
1. FasterDecoding/Medusa safetensors: ``medusa_lm_head.safetensors`` (+ ``config.json`` beside it), keys
   ``{i}.{j}.linear.weight|bias`` and ``{i}.{L}.weight`` (or the same under ``medusa_head.`` in a full model).
   Heads are counted from the tensors: released configs under-report them.
2. MedusaBitNet heads embedded in a GGUF: ``medusa.head.{k}.layer.{l}.w_in.weight`` / ``w_out.weight``, metadata
   ``medusa.n_heads``, ``medusa.n_layers_per_head``, ``medusa.hidden_size``; the projection is the backbone's.
3. This project's own safetensors (see README "Heads format"): ``head.{k}.block.{l}.w_in|b_in|w_out``, an
   optional ``head.{k}.proj`` and, for token-conditioned heads (format version 2), ``head.{k}.cond.{j}``, with
   JSON metadata under the key ``llama_medusa``.

Token-conditioned heads (Hydra-style, Ankner et al. 2024) add ``U_{k,j} . e(token_j)`` to the first block's
pre-activation, where token_0 is the root (the token the backbone just sampled) and token_j (j >= 1) the top-1
draft of head j-1, e the backbone's token embedding. Plain Medusa heads must guess the root; these see it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .answers import SEPARATOR, check as check_answers, split as split_texts

Block = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]  # (w_in, b_in, w_out)

FORMAT_KEY = "llama_medusa"
FORMAT_VERSION = 2  # 2: token-conditioned heads (head.{k}.cond.{j}); files without them are still written as 1
PROJ_DTYPES = ("f32", "f16", "i8")

_PICKLE_HINT = (
    "{path} is a PyTorch pickle; llama-medusa never unpickles files (a pickle can run arbitrary code). Convert it "
    "once with PyTorch: python -c \"import torch; from safetensors.torch import save_file; "
    "save_file({{k: v.float().contiguous() for k, v in torch.load('{path}', map_location='cpu').items()}}, "
    "'medusa_lm_head.safetensors')\" and keep config.json beside it."
)


@dataclass
class MedusaHeads:
    """K heads: ``blocks[k]`` residual blocks each, and ``proj[k]`` (None = share the backbone's output matrix)."""

    blocks: List[List[Block]]
    proj: List[Optional[np.ndarray]]
    hidden_size: int
    source: str = "<memory>"
    format: str = "llama-medusa"
    meta: Dict[str, Any] = field(default_factory=dict)
    # Token ids the heads may propose (sorted), or None for the whole vocabulary. The projection is evaluated on
    # these rows only: 8,192 of SmolLM2's 49,152 tokens cost a sixth of the full projection (vLLM's token_map).
    draft_vocab: Optional[np.ndarray] = None
    # Token conditioning: cond[k][j] is U_{k,j}, [inner of head k's first block, hidden]; head k may use chain
    # positions 0..k (root, then heads 0..k-1's top-1 drafts). None or all-empty = plain Medusa heads.
    cond: Optional[List[List[np.ndarray]]] = None
    # The greedy answers the heads were trained on (token ids, answers.SEPARATOR between answers), or None: the
    # lookup's second source (answers.py). Stored as the int32 tensor ``answers``.
    answers: Optional[np.ndarray] = None
    # Greedy answers to held-out prompts, each with its prompt (what the lookup sees as context), or None: `auto`
    # replays the lookup gate over them to predict what the lookup alone gains on this machine's cost curve
    # (LookupGate.replay). Stored as the int32 tensors ``reference`` (prompt + answer, answers.SEPARATOR between
    # texts) and ``reference_prompt_tokens`` (each text's prompt length).
    reference: Optional[np.ndarray] = None
    reference_prompt_tokens: Optional[np.ndarray] = None

    def __post_init__(self):
        if not self.blocks:
            raise ValueError(f"{self.source}: no Medusa heads found")
        if len(self.proj) != len(self.blocks):
            raise ValueError(f"{self.source}: {len(self.blocks)} heads but {len(self.proj)} projections")
        H = self.hidden_size
        for k, head in enumerate(self.blocks):
            for l, (w_in, b_in, w_out) in enumerate(head):
                inner = w_in.shape[0]
                ok = w_in.ndim == 2 and w_in.shape[1] == H
                ok = ok and (b_in is None or b_in.shape == (inner,))
                ok = ok and (w_out.shape == (H, inner) if w_out is not None else inner == H)
                if not ok:
                    raise ValueError(
                        f"{self.source}: head {k} block {l} has shapes w_in {w_in.shape}, "
                        f"b_in {None if b_in is None else b_in.shape}, w_out {None if w_out is None else w_out.shape}; "
                        f"they do not fit hidden size {H}"
                    )
        vocabs = {p.shape[0] for p in self.proj if p is not None}
        for k, p in enumerate(self.proj):
            if p is not None and (p.ndim != 2 or p.shape[1] != H):
                raise ValueError(f"{self.source}: head {k} projection has shape {p.shape}, expected [vocab, {H}]")
        if len(vocabs) > 1:
            raise ValueError(f"{self.source}: head projections disagree on the vocabulary size: {sorted(vocabs)}")
        if self.cond is not None:
            if len(self.cond) != len(self.blocks):
                raise ValueError(f"{self.source}: {len(self.blocks)} heads but conditioning for {len(self.cond)}")
            for k, us in enumerate(self.cond):
                if len(us) > k + 1:
                    raise ValueError(f"{self.source}: head {k} conditions on {len(us)} tokens; at most {k + 1} "
                                     "(the root and the drafts of the heads before it) are known when it runs")
                if us and not self.blocks[k]:
                    raise ValueError(f"{self.source}: head {k} is token-conditioned but has no residual block")
                for j, u in enumerate(us):
                    want = (self.blocks[k][0][0].shape[0], H)
                    if u.shape != want:
                        raise ValueError(f"{self.source}: head {k} conditioning {j} has shape {u.shape}, "
                                         f"expected {want}")
            if not any(self.cond):
                self.cond = None
        if self.draft_vocab is not None:
            dv = np.asarray(self.draft_vocab)
            # integers within int32 (the cast below must not round or wrap an id into another one)
            if (dv.ndim != 1 or len(dv) == 0 or not np.issubdtype(dv.dtype, np.integer) or dv.min() < 0
                    or dv.max() > np.iinfo(np.int32).max or np.any(np.diff(dv) <= 0)):
                raise ValueError(f"{self.source}: draft_vocab must be a non-empty, sorted list of distinct token ids, "
                                 f"got {dv.dtype} of shape {dv.shape}")
            self.draft_vocab = dv.astype(np.int32)
        if self.answers is not None:
            self.answers = check_answers(self.answers, what=f"{self.source}: answers")
        if (self.reference is None) != (self.reference_prompt_tokens is None):
            raise ValueError(f"{self.source}: reference and reference_prompt_tokens come together (one is missing)")
        if self.reference is not None:
            self.reference = check_answers(self.reference, what=f"{self.source}: reference")
            n = np.asarray(self.reference_prompt_tokens)
            texts = split_texts(self.reference)
            if (n.ndim != 1 or not np.issubdtype(n.dtype, np.integer) or len(n) != len(texts)
                    or len(self.reference) and self.reference[-1] != SEPARATOR
                    or any(not 0 < int(k) < len(t) for k, t in zip(n, texts))):
                raise ValueError(f"{self.source}: reference_prompt_tokens must hold one prompt length per reference "
                                 f"text ({len(texts)}), each shorter than its text, got {n.dtype} of shape {n.shape}")
            self.reference_prompt_tokens = n.astype(np.int32)

    def reference_texts(self) -> List[Tuple[np.ndarray, int]]:
        """(prompt + answer token ids, prompt length) per reference text ([] when the file has none)."""
        if self.reference is None:
            return []
        return [(t, int(n)) for t, n in zip(split_texts(self.reference), self.reference_prompt_tokens)]

    @property
    def n_heads(self) -> int:
        return len(self.blocks)

    @property
    def conditioned(self) -> bool:
        """True for token-conditioned heads (they need the backbone's token embedding)."""
        return self.cond is not None

    @property
    def shared_projection(self) -> bool:
        return any(p is None for p in self.proj)

    @property
    def vocab_size(self) -> Optional[int]:
        """The heads' own vocabulary size, or None when they only use the backbone's projection."""
        return next((p.shape[0] for p in self.proj if p is not None), None)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str, model_path: Optional[str] = None) -> "MedusaHeads":
        """Loads any supported heads file (or a directory holding one). Formats are told apart by their bytes."""
        path = os.fspath(path)
        if os.path.isdir(path):
            for name in ("medusa_lm_head.safetensors", "model.safetensors", "heads.safetensors"):
                if os.path.exists(os.path.join(path, name)):
                    return cls.load(os.path.join(path, name), model_path)
            pickles = [n for n in ("medusa_lm_head.pt", "pytorch_model.bin") if os.path.exists(os.path.join(path, n))]
            if pickles:
                raise ValueError(_PICKLE_HINT.format(path=os.path.join(path, pickles[0])))
            raise ValueError(f"{path}: no Medusa heads file in this directory (looked for medusa_lm_head.safetensors)")
        if not os.path.exists(path):
            raise ValueError(f"Medusa heads file does not exist: {path}")
        with open(path, "rb") as f:
            magic = f.read(9)
        if magic[:4] == b"GGUF":
            from .gguf_heads import load_gguf_heads

            return load_gguf_heads(path)
        # safetensors first: its first byte is the header length's low byte, which is 0x80 for a 128-byte header,
        # so testing for a pickle's 0x80 first would call such a file a pickle
        if len(magic) == 9 and magic[8:9] == b"{":
            return _load_safetensors(path)
        if magic[:4] == b"PK\x03\x04" or (magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise ValueError(_PICKLE_HINT.format(path=path))
        raise ValueError(f"{path}: not a safetensors or GGUF file (unrecognised header {magic[:8]!r})")

    # ------------------------------------------------------------------ saving (own format)
    def save(self, path: str, extra_meta: Optional[Dict[str, Any]] = None, half: bool = False) -> None:
        """Writes the llama-medusa format; half=True stores weights as float16 (loaded back as float32)."""
        from safetensors.numpy import save_file

        tensors: Dict[str, np.ndarray] = {}
        for k, head in enumerate(self.blocks):
            for l, (w_in, b_in, w_out) in enumerate(head):
                tensors[f"head.{k}.block.{l}.w_in"] = np.ascontiguousarray(w_in)
                if b_in is not None:
                    tensors[f"head.{k}.block.{l}.b_in"] = np.ascontiguousarray(b_in)
                if w_out is not None:
                    tensors[f"head.{k}.block.{l}.w_out"] = np.ascontiguousarray(w_out)
            if self.proj[k] is not None:
                tensors[f"head.{k}.proj"] = np.ascontiguousarray(self.proj[k])
            for j, u in enumerate(self.cond[k] if self.cond else []):
                tensors[f"head.{k}.cond.{j}"] = np.ascontiguousarray(u)
        if self.draft_vocab is not None:
            tensors["draft_vocab"] = np.ascontiguousarray(self.draft_vocab, dtype=np.int32)
        if self.answers is not None:
            tensors["answers"] = np.ascontiguousarray(self.answers, dtype=np.int32)
        if self.reference is not None:
            tensors["reference"] = np.ascontiguousarray(self.reference, dtype=np.int32)
            tensors["reference_prompt_tokens"] = np.ascontiguousarray(self.reference_prompt_tokens, dtype=np.int32)
        if half:
            tensors = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
        meta = dict(self.meta)
        meta.update(extra_meta or {})
        meta.update(
            version=FORMAT_VERSION if self.conditioned else 1,
            conditioning="tokens" if self.conditioned else "none",
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            projection="shared" if self.shared_projection else "own",
        )
        save_file(tensors, path, metadata={FORMAT_KEY: json.dumps(meta)})

    # ------------------------------------------------------------------ binding to a model
    def check_model(self, n_embd: int, n_vocab: int) -> None:
        if self.hidden_size != n_embd:
            raise ValueError(
                f"Medusa heads {self.source} have hidden size {self.hidden_size}, but the model's is {n_embd}: "
                "these heads were trained for another model"
            )
        if self.vocab_size is not None and self.vocab_size != n_vocab:
            raise ValueError(
                f"Medusa heads {self.source} project onto {self.vocab_size} tokens, but the model's vocabulary has "
                f"{n_vocab}: these heads were trained for another model"
            )
        if self.answers is not None:
            check_answers(self.answers, n_vocab, what=f"Medusa heads {self.source}: answers")
        if self.reference is not None:
            check_answers(self.reference, n_vocab, what=f"Medusa heads {self.source}: reference")
        if self.draft_vocab is not None and int(self.draft_vocab.max()) >= n_vocab:
            raise ValueError(
                f"Medusa heads {self.source} draft from token id {int(self.draft_vocab.max())}, but the model's "
                f"vocabulary has {n_vocab} tokens: these heads were trained for another model"
            )
        expect = self.meta.get("n_vocab")
        if expect is not None and int(expect) != n_vocab:
            raise ValueError(
                f"Medusa heads {self.source} were trained on a model with a {expect}-token vocabulary, "
                f"this model has {n_vocab}"
            )

    def engine(self, model_path: Optional[str], n_embd: int, n_vocab: int, proj_dtype: str = "i8",
               n_threads: int = 0, backbone_proj: Optional[np.ndarray] = None, device: str = "cpu"):
        """Builds the evaluator: the native CPU engine, or with device="gpu" the GPU module's (projection kept in
        float16 there). The shared projection is read from the model GGUF unless given."""
        from . import _native

        self.check_model(n_embd, n_vocab)
        if proj_dtype not in PROJ_DTYPES:
            raise ValueError(f"medusa projection dtype must be one of {PROJ_DTYPES}, got {proj_dtype!r}")
        if device == "gpu":
            from . import gpu

            if self.conditioned:
                raise ValueError(f"Medusa heads {self.source} are token-conditioned; the GPU module evaluates plain "
                                 "Medusa heads only: use medusa_device='cpu'")
            reason = gpu.why_not()
            if reason:
                raise ValueError(f"medusa heads on the GPU: {reason}")
            eng = gpu.module().HeadsEngine(self.hidden_size)
        elif device == "cpu":
            eng = _native.HeadsEngine(self.hidden_size, n_threads)
        else:
            raise ValueError(f"medusa device must be 'cpu' or 'gpu', got {device!r}")
        ids: Dict[int, int] = {}
        shared_id = None
        for k in range(self.n_heads):
            p = self.proj[k]
            if p is None:
                if shared_id is None:
                    if backbone_proj is None:
                        if model_path is None:
                            raise ValueError("these heads share the backbone's output matrix: a model path is needed")
                        from .gguf_heads import read_output_matrix

                        backbone_proj = read_output_matrix(model_path)
                    if backbone_proj.shape != (n_vocab, n_embd):
                        raise ValueError(
                            f"the model's output matrix has shape {backbone_proj.shape}, expected ({n_vocab}, {n_embd})"
                        )
                    shared_id = _add_projection(eng, self._rows(backbone_proj), proj_dtype, device)
                pid = shared_id
            else:
                if id(p) not in ids:
                    ids[id(p)] = _add_projection(eng, self._rows(p), proj_dtype, device)
                pid = ids[id(p)]
            if device == "gpu":
                blocks = list(self.blocks[k])
            else:  # the CPU engine keeps exactly-float16 weights (heads files store them so) in float16
                blocks = [(_compact(w_in), b_in, None if w_out is None else _compact(w_out))
                          for (w_in, b_in, w_out) in self.blocks[k]]
            if self.conditioned:  # CPU engine only (the GPU path refused these heads above)
                eng.add_head(blocks, pid, cond=[_compact(u) for u in self.cond[k]])
            else:
                eng.add_head(blocks, pid)
        return eng

    def _rows(self, w: np.ndarray) -> np.ndarray:
        return w if self.draft_vocab is None else w[self.draft_vocab]

    def token_ids(self, local: np.ndarray) -> np.ndarray:
        """Engine row indices -> token ids."""
        return local if self.draft_vocab is None else self.draft_vocab[local]


def _compact(w: np.ndarray) -> np.ndarray:
    """w as float16 when that is lossless (weights loaded from a float16 file), else unchanged: the engine streams
    head weights every step, so half the bytes is most of a head's time."""
    h = w.astype(np.float16)
    return h if np.array_equal(h.astype(w.dtype), w) else w


def _add_projection(eng, w: np.ndarray, dtype: str, device: str) -> int:
    if device == "gpu":  # the GPU engine takes float and stores float16 itself
        return eng.add_projection(np.asarray(w, dtype=np.float32))
    return eng.add_projection(*convert_projection(w, dtype))


def convert_projection(w: np.ndarray, dtype: str):
    """[vocab, hidden] float matrix -> (weights, scales or None) in the engine's storage type."""
    w = np.asarray(w, dtype=np.float32)
    if dtype == "f32":
        return np.ascontiguousarray(w), None
    if dtype == "f16":
        return np.ascontiguousarray(w.astype(np.float16)), None
    return quantize_rows_i8(w)


def quantize_rows_i8(w: np.ndarray):
    """Symmetric per-row int8: q = round(w / s), s = absmax / 127 (the engine's I8 projection)."""
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.rint(w / scale[:, None]).astype(np.int8)
    return np.ascontiguousarray(q), scale


def _load_safetensors(path: str) -> MedusaHeads:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    except Exception as e:  # safetensors raises bare exceptions for some malformed headers
        raise ValueError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    draft_vocab = tensors.pop("draft_vocab", None)
    answers = tensors.pop("answers", None)
    reference = (tensors.pop("reference", None), tensors.pop("reference_prompt_tokens", None))
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    if FORMAT_KEY in meta:
        return _from_own(path, tensors, _own_meta(path, meta[FORMAT_KEY]), draft_vocab, answers, reference)
    return _from_medusa(path, tensors)


def _own_meta(path: str, text: str) -> Dict[str, Any]:
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


def _from_own(path: str, t: Dict[str, np.ndarray], meta: Dict[str, Any], draft_vocab=None,
              answers=None, reference=(None, None)) -> MedusaHeads:
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
    return MedusaHeads(blocks, proj, int(meta["hidden_size"]), source=path, format="llama-medusa", meta=meta,
                       draft_vocab=draft_vocab, cond=cond, answers=answers, reference=reference[0],
                       reference_prompt_tokens=reference[1])


def _from_medusa(path: str, t: Dict[str, np.ndarray]) -> MedusaHeads:
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
    return MedusaHeads(blocks, proj, hidden, source=path, format="medusa", meta=meta)
