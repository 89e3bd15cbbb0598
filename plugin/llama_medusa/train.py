"""`llama-medusa train`: heads for any GGUF llama.cpp loads, by self-distillation, numpy only.

1. Collect: the backbone answers generic prompts greedily (its own continuations are the targets); one
   embeddings-on decode per answer gives the final-norm state h_t of every position. Cached per prompt, so an
   interrupted run resumes.
2. Fit: head k is a block h + W_out . SiLU(W_in . h + b) followed by the backbone's (frozen, shared) output
   matrix, trained with cross-entropy on token t+2+k, Adam, per-head loss. The softmax runs over the draft
   vocabulary (the most frequent answer tokens), which is also all the heads ever propose at inference.
3. Measure: per-head top-1..10 accuracy on held-out prompts, stored in the heads file for the tree choice.
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence

import numpy as np

# Generic chat / explanation / code prompts (written for this project) used to collect training states.
TRAIN_PROMPTS = [
    "What is photosynthesis?", "Explain how vaccines work.", "Write a haiku about autumn.",
    "How do I make a cup of tea?", "What causes earthquakes?", "Describe the water cycle.",
    "Write a Python function to reverse a list.", "Explain recursion with an example.",
    "What is the capital of Japan and what is it known for?", "Give me tips for a job interview.",
    "Write a short story about a dragon who is afraid of fire.", "How does a computer store data?",
    "What are the benefits of regular exercise?", "Explain the difference between weather and climate.",
    "Write a SQL query that counts orders per customer.", "What is machine learning?",
    "How do airplanes stay in the air?", "Write a poem about the sea.", "What is the theory of evolution?",
    "Explain what an API is to a beginner.", "Write a Python class for a bank account.",
    "How can I improve my sleep?", "What is the difference between a virus and a bacterium?",
    "Describe a typical day of a medieval farmer.", "Write a bash command to find large files.",
    "Why do leaves change color in the fall?", "Explain how the internet works.",
    "Give me a recipe for pancakes.", "What is a black hole?", "Write a function in C that sums an array.",
    "How do I learn a new language quickly?", "What is democracy?", "Explain the Pythagorean theorem.",
    "Write a letter thanking a teacher.", "What are prime numbers?", "How does a car engine work?",
    "Summarize the plot of Romeo and Juliet.", "Write a Python script that reads a CSV file.",
    "What is inflation?", "Explain how batteries work.", "What should I pack for a camping trip?",
    "Write a regular expression that matches an email address.", "How do plants grow from seeds?",
    "What is the role of the heart in the body?", "Explain object-oriented programming.",
    "Write a motivational message for a student.", "What are the planets of the solar system?",
    "How do I write a good essay?", "Explain what DNA is.", "Write a JavaScript function to debounce calls.",
]


TOPICS = [
    "the moon", "volcanoes", "bees", "the stock market", "climate change", "the Roman Empire", "coffee",
    "electric cars", "chess", "the human brain", "rainbows", "pizza", "the ocean", "friendship", "robots",
    "gardening", "the French Revolution", "solar panels", "dinosaurs", "music theory", "sleep", "bicycles",
    "the immune system", "social media", "mountains", "cryptography", "bread baking", "time management",
    "photography", "the Olympic Games", "rivers", "memory", "airports", "libraries", "spiders", "recycling",
    "quantum computers", "wolves", "volunteering", "deserts",
]
TEMPLATES = [
    "Explain {t} to a ten-year-old.", "Write a short poem about {t}.", "Give me five interesting facts about {t}.",
    "What are the pros and cons of {t}?", "Write a short story involving {t}.", "Summarize the history of {t}.",
    "How would you teach a class about {t}?", "Write a blog post introduction about {t}.",
]
CODE_PROMPTS = [
    "Write a Python function that {t}.", "Write a JavaScript function that {t}.", "Explain how to {t} in Python.",
]
CODE_TASKS = [
    "sorts a list of dictionaries by a key", "counts word frequencies in a text", "checks if a number is prime",
    "merges two sorted lists", "parses a date string", "computes the average of a list", "flattens a nested list",
    "validates a password", "converts Celsius to Fahrenheit", "finds the longest word in a sentence",
    "reads a JSON file", "removes vowels from a string",
]


ANSWER_TOKENS = 200  # answer length per training prompt; part of the collection cache key


def generic_prompts():
    """The built-in training prompts: hand-written ones, then topic x template and code-task combinations."""
    out = list(TRAIN_PROMPTS)
    out += [tpl.format(t=t) for t in TOPICS for tpl in TEMPLATES]
    out += [tpl.format(t=t) for t in CODE_TASKS for tpl in CODE_PROMPTS]
    return out


def collect(model_path: str, prompts: Sequence[str], max_tokens: int = ANSWER_TOKENS, n_threads: Optional[int] = None,
            log=print):
    """Greedy answers through the model's chat template and their final-norm states, one cached .npz per prompt:
    list of (tokens [n], states [n, H], prompt length)."""
    import hashlib

    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from .models import cache_dir

    tag = f"{os.path.basename(model_path)}-{os.path.getsize(model_path)}"
    cdir = os.path.join(cache_dir(), "train", tag)
    os.makedirs(cdir, exist_ok=True)
    gen = emb = fmt = None
    out = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        f = os.path.join(cdir, hashlib.sha1(f"{max_tokens}\0{p}".encode()).hexdigest() + ".npz")
        if os.path.exists(f):
            z = np.load(f)
            out.append((z["tokens"], z["states"], int(z["n_prompt"])))
            continue
        if gen is None:
            gen = llama_cpp.Llama(model_path, n_ctx=2048, flash_attn=True, verbose=False, n_threads=n_threads)
            emb = llama_cpp.Llama(model_path, n_ctx=2048, n_batch=2048, n_ubatch=2048, embedding=True,
                                  verbose=False, n_threads=n_threads, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
            template = gen.metadata.get("tokenizer.chat_template")
            if template:
                tok_str = lambda t: gen._model.token_get_text(t) if t >= 0 else ""
                fmt = Jinja2ChatFormatter(template, tok_str(gen.token_eos()), tok_str(gen.token_bos()))
        text = fmt(messages=[{"role": "user", "content": p}]).prompt if fmt else p
        pt = gen.tokenize(text.encode(), special=True)
        answer = []
        for tok in gen.generate(pt, temp=0.0):
            answer.append(tok)
            if len(answer) >= max_tokens or llama_cpp.llama_vocab_is_eog(gen._model.vocab, tok):
                break
        toks = np.array(pt + answer, dtype=np.int32)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(emb._ctx.ctx), -1, -1, -1)
        emb.n_tokens = 0
        emb.eval(toks.tolist())
        H = llama_cpp.llama_model_n_embd(emb._model.model)
        states = np.empty((len(toks), H), dtype=np.float32)
        for j in range(len(toks)):
            states[j] = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(emb._ctx.ctx, j), shape=(H,))
        np.savez(f + ".part.npz", tokens=toks, states=states, n_prompt=len(pt))
        os.replace(f + ".part.npz", f)
        out.append((toks, states, len(pt)))
        log(f"collected {i + 1}/{len(prompts)} ({len(toks)} tokens, {time.perf_counter() - t0:.0f} s)")
    return out


def _silu_grad(a, sig):
    return sig * (1.0 + a * (1.0 - sig))


def fit_heads_ce(data, proj: np.ndarray, n_heads: int = 3, draft_vocab: int = 8192, inner: int = 1024,
                 epochs: int = 3, lr: float = 1e-3, batch: int = 256, seed: int = 0, log=print):
    """Cross-entropy training of heads h + W_out . SiLU(W_in . h + b) through the backbone's (frozen) output
    matrix, restricted to the `draft_vocab` most frequent target tokens (vLLM's truncated-vocabulary Medusa): the
    softmax runs over that set, and at inference the heads only ever propose from it. numpy + Adam.

    Head k learns token t+2+k from h_t; targets are the backbone's own greedy answers (self-distillation)."""
    from .heads import MedusaHeads

    H = proj.shape[1]
    rng = np.random.default_rng(seed)
    toks_all = np.concatenate([toks[n_prompt:] for toks, _, n_prompt in data])
    counts = np.bincount(toks_all, minlength=proj.shape[0])
    vocab = np.sort(np.argsort(-counts, kind="stable")[: min(draft_vocab, int((counts > 0).sum()))]).astype(np.int32)
    local = np.full(proj.shape[0], -1, dtype=np.int64)
    local[vocab] = np.arange(len(vocab))
    P = np.ascontiguousarray(proj[vocab], dtype=np.float32)  # [N, H]
    log(f"draft vocabulary: {len(vocab)} tokens cover {counts[vocab].sum() / counts.sum():.1%} of the answers")
    blocks = []
    for k in range(n_heads):
        X, T = [], []
        for toks, states, n_prompt in data:
            t = np.arange(max(n_prompt - 1, 0), len(toks) - 2 - k)
            X.append(states[t])
            T.append(local[toks[t + 2 + k]])
        X, T = np.concatenate(X), np.concatenate(T)
        keep = T >= 0
        X, T = X[keep], T[keep]
        w_in = (rng.standard_normal((inner, H)) / np.sqrt(H)).astype(np.float32)
        b_in = np.zeros(inner, np.float32)
        w_out = np.zeros((H, inner), np.float32)
        params = [w_in, b_in, w_out]
        m1 = [np.zeros_like(p) for p in params]
        m2 = [np.zeros_like(p) for p in params]
        step = 0
        for ep in range(epochs):
            order = rng.permutation(len(X))
            total, seen = 0.0, 0
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                x, tgt = X[idx], T[idx]
                a = x @ w_in.T + b_in
                sig = 1.0 / (1.0 + np.exp(-a))
                s = a * sig
                z = x + s @ w_out.T
                logits = z @ P.T
                logits -= logits.max(axis=1, keepdims=True)
                e = np.exp(logits)
                p = e / e.sum(axis=1, keepdims=True)
                total += -np.log(p[np.arange(len(idx)), tgt] + 1e-12).sum()
                seen += len(idx)
                p[np.arange(len(idx)), tgt] -= 1.0
                p /= len(idx)
                dz = p @ P
                g_out = dz.T @ s
                da = (dz @ w_out) * _silu_grad(a, sig)
                grads = [da.T @ x, da.sum(axis=0), g_out]
                step += 1
                for j, (prm, g) in enumerate(zip(params, grads)):
                    m1[j] = 0.9 * m1[j] + 0.1 * g
                    m2[j] = 0.999 * m2[j] + 0.001 * g * g
                    prm -= lr * (m1[j] / (1 - 0.9**step)) / (np.sqrt(m2[j] / (1 - 0.999**step)) + 1e-8)
            log(f"head {k}: epoch {ep + 1}/{epochs}, loss {total / max(seen, 1):.3f} over {seen} states")
        blocks.append([(w_in, b_in, w_out)])
    return MedusaHeads(blocks, [None] * n_heads, H, format="llama-medusa", draft_vocab=vocab)


def accuracy(heads, model_path: str, data, top_k: int = 10, proj=None) -> List[List[float]]:
    """Per-head top-1..top_k hit rates (cumulative) of the heads on (held-out) collected data."""
    from .gguf_heads import read_output_matrix

    proj = read_output_matrix(model_path) if proj is None else proj
    eng = heads.engine(model_path, heads.hidden_size, proj.shape[0], "i8", backbone_proj=proj)
    hits = np.zeros((heads.n_heads, top_k))
    count = np.zeros(heads.n_heads)
    for toks, states, n_prompt in data:
        t = np.arange(max(n_prompt - 1, 0), len(toks) - 1)
        ids, _ = eng.topk(states[t], top_k)
        ids = heads.token_ids(ids)
        for k in range(heads.n_heads):
            ok = t + 2 + k < len(toks)
            target = toks[(t + 2 + k)[ok]]
            found = ids[ok, k, :] == target[:, None]
            hits[k] += np.cumsum(found, axis=1).sum(axis=0)
            count[k] += ok.sum()
    return (hits / np.maximum(count, 1)[:, None]).tolist()


def train(model_path: str, out_path: str, n_heads: int = 3, max_tokens: int = ANSWER_TOKENS, held_out: int = 16,
          prompts: Optional[Sequence[str]] = None, epochs: int = 4, draft_vocab: int = 8192, seed: int = 0,
          n_threads: Optional[int] = None, log=print):
    """The whole recipe; returns (heads, held-out accuracies)."""
    from .gguf_heads import read_output_matrix

    prompts = list(prompts or generic_prompts())
    if len(prompts) <= held_out:
        raise ValueError(f"need more than {held_out} prompts (the held-out split), got {len(prompts)}")
    # held-out prompts: every k-th, so both sets span all prompt kinds
    step = len(prompts) // held_out
    test_idx = set(range(step - 1, len(prompts), step)[:held_out])
    data = collect(model_path, prompts, max_tokens=max_tokens, n_threads=n_threads, log=log)
    train_data = [d for i, d in enumerate(data) if i not in test_idx]
    test_data = [d for i, d in enumerate(data) if i in test_idx]
    proj = read_output_matrix(model_path)
    heads = fit_heads_ce(train_data, proj, n_heads=n_heads, draft_vocab=draft_vocab, epochs=epochs, seed=seed,
                         log=log)
    acc = accuracy(heads, model_path, test_data, proj=proj)
    heads.save(out_path, extra_meta={
        "n_vocab": int(proj.shape[0]), "trained_on": os.path.basename(model_path), "seed": seed,
        "method": "self-distilled cross-entropy over the draft vocabulary, shared backbone projection",
        "train_prompts": len(train_data), "train_states": int(sum(len(d[0]) - d[2] for d in train_data)),
        "top_k_accuracy": acc,
    }, half=True)
    log("held-out top-1 accuracy per head: " + ", ".join(f"{a[0]:.2f}" for a in acc))
    return heads, acc
