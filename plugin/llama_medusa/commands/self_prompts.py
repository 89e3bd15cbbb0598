"""Prompts the model writes itself (Magpie's recipe, Xu et al. 2024): the chat template up to the start of a user
turn, continued with llama.cpp's sampler until the turn ends, gives the requests the instruct model has learnt to
expect from users. They spread the training answers over the model's own idea of what users ask, where the
built-in prompts repeat this project's templates (on those the draft's accuracy overstates what users see:
BENCHMARKS.md). Held-out subjects (the validation and bench prompts') are dropped, and so are repeats."""
from __future__ import annotations

import json
import os
import re
from typing import List, Optional

SENTINEL = "\x00USER\x00"


def user_turn_prefix(fmt) -> str:
    """The template's text before a user's message (system turn included), cut at a sentinel message."""
    text = fmt(messages=[{"role": "user", "content": SENTINEL}]).prompt
    if SENTINEL not in text:
        raise ValueError("the chat template does not place the user's message in the prompt")
    return text[: text.index(SENTINEL)]


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower())


def keep(text: str, seen: set, held_out_subjects) -> Optional[str]:
    """The request, stripped, if it is a usable prompt: one to 80 words of mostly ASCII text, not seen before
    (case and punctuation aside), about none of the held-out subjects; else None."""
    t = text.strip()
    words = t.split()
    if not 1 <= len(words) <= 80 or len(t) < 8:
        return None
    if sum(c.isascii() for c in t) < 0.95 * len(t) or "<|" in t:
        return None
    key = _norm(t)
    if key in seen or any(_norm(s) in key for s in held_out_subjects):
        return None
    seen.add(key)
    return t


def self_prompts(model_path: str, n: int, seed: int = 0, parallel: int = 16, max_tokens: int = 96,
                 temperature: float = 1.0, min_p: float = 0.05, n_threads: Optional[int] = None, log=print) -> List[str]:
    """n distinct user requests the model writes itself, sampled (temperature, min-p) with a seeded llama.cpp
    sampler; cached per model, seed and settings, so a second call reads them back. The stream is the same for a
    given seed, so fewer prompts are its first ones, and more are drawn from the start again."""
    import llama_cpp

    from .prompts import HELD_OUT_SUBJECTS
    from .train import _Generator, model_cache_dir

    if n <= 0:
        return []
    name = f"self-prompts-{seed}-{temperature:g}-{min_p:g}-{max_tokens}-{parallel}.json"
    path = os.path.join(model_cache_dir(model_path), name)
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if len(cached) >= n:
            return cached[:n]
    gen = _Generator(model_path, parallel, max_tokens, n_threads)
    lc, llm = llama_cpp, gen.llm
    if gen.fmt is None:
        gen.close()
        raise ValueError(f"{model_path}: the model has no chat template, so it cannot write user turns")
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(min_p, 1))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
    try:
        prefix = llm.tokenize(user_turn_prefix(gen.fmt).encode(), add_bos=False, special=True)
        out: List[str] = []
        seen: set = set()
        drawn, rounds = 0, 0
        while len(out) < n:
            for toks, ended in gen.sample(prefix, parallel, chain, max_tokens):
                if len(out) == n:
                    break
                drawn += 1
                p = keep(llm.detokenize(toks).decode("utf-8", errors="replace"), seen, HELD_OUT_SUBJECTS) \
                    if ended else None  # a turn cut at max_tokens is not a whole request
                if p is not None:
                    out.append(p)
            rounds += 1
            if rounds % 20 == 0:
                log(f"self prompts: kept {len(out)} of {drawn} drawn")
            if drawn > 20 * n + 1000:
                raise RuntimeError(f"only {len(out)} usable distinct prompts in {drawn} drawn; the model repeats itself")
    finally:
        lc.llama_sampler_free(chain)
        gen.close()
    with open(path + ".part", "w") as f:
        json.dump(out, f, indent=0)
    os.replace(path + ".part", path)
    return out[:n]
