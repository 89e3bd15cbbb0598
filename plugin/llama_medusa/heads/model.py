"""Medusa heads in memory: K heads, each residual blocks ``x <- x + W_out . SiLU(W_in . x + b_in)`` and a
vocabulary projection (its own ``[vocab, hidden]`` matrix, or the backbone's output matrix shared by all heads).
FasterDecoding/Medusa's ResBlock is the block without W_out; MedusaBitNet's is the one without a bias.

Token-conditioned heads (Hydra-style, Ankner et al. 2024) add ``U_{k,j} . e(token_j)`` to the first block's
pre-activation, where token_0 is the root (the token the backbone just sampled) and token_j (j >= 1) the top-1
draft of head j-1, e the backbone's token embedding. Plain Medusa heads must guess the root; these see it.
The file formats are files.py and its neighbours; engine.py binds heads to the native evaluator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..drafting.answers import SEPARATOR
from ..drafting.answers import check as check_answers
from ..drafting.answers import split as split_texts
from . import engine as _engine
from . import files, own

Block = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]  # (w_in, b_in, w_out)
PROJ_DTYPES = _engine.PROJ_DTYPES


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


    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str, model_path: Optional[str] = None) -> "MedusaHeads":
        """Loads any supported heads file (or a directory holding one). Formats are told apart by their bytes."""
        return cls(**files.read(path))

    def save(self, path: str, extra_meta: Optional[Dict[str, Any]] = None, half: bool = False) -> None:
        """Writes the llama-medusa format; half=True stores weights as float16 (loaded back as float32)."""
        own.write(self, path, extra_meta, half)

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
        """The native evaluator of these heads (engine.build): the CPU engine, or with device="gpu" the GPU
        module's. The shared projection is read from the model GGUF unless given."""
        self.check_model(n_embd, n_vocab)
        return _engine.build(self, model_path, n_embd, n_vocab, proj_dtype, n_threads, backbone_proj, device)

    def _rows(self, w: np.ndarray) -> np.ndarray:
        return w if self.draft_vocab is None else w[self.draft_vocab]

    def token_ids(self, local: np.ndarray) -> np.ndarray:
        """Engine row indices -> token ids."""
        return local if self.draft_vocab is None else self.draft_vocab[local]

