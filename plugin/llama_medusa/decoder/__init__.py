"""The decoder: a generate() loop that drafts, verifies a tree in one backbone pass, accepts and commits.
It reaches the model only through the Backbone interface (backbones/base.py) and the drafts only through the
drafter, so it does not care which backbone runs nor which drafter proposes."""
from __future__ import annotations

import ctypes

from .loop import Decode, Draft
from .speculation import Speculation, plain

__all__ = ["Decode", "Draft", "Speculation", "plain", "generate"]


def generate(llm, backbone, spec: Speculation, tokens, reset: bool, stopping_criteria, sampling: dict):
    """Tokens as stock generate() yields them, produced by `spec`'s speculation on `backbone`."""
    llm._mirostat_mu = ctypes.c_float(2.0 * sampling["mirostat_tau"])
    llm._sampler = llm._init_sampler(**sampling)
    typical = spec.typical if (sampling["temp"] > 0 and sampling["grammar"] is None
                               and sampling["mirostat_mode"] == 0) else None
    yield from Decode(llm, backbone, spec, list(tokens), reset, stopping_criteria, typical, sampling["temp"]).run()
