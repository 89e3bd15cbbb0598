"""Self-distilled heads in closed form (numpy only, minutes on a 2-core CPU).

The backbone answers a set of prompts greedily; its final-norm states h_t along those answers are collected with
one embeddings-on decode per answer. Head k must make the backbone's own output matrix predict token t+2+k from
h_t, and the backbone itself does that from its later state h_{t+1+k}. So each head is a MedusaBitNet-style block
h + W_out . SiLU(W_in . h) whose W_in is a fixed random projection and whose W_out is the ridge-regression
solution of W_out . SiLU(W_in . h_t) ~ h_{t+1+k} - h_t: a least-squares fit instead of cross-entropy training,
which needs no autograd and no GPU. The vocabulary projection stays the backbone's (shared).
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


def generic_prompts():
    """The built-in training prompts: hand-written ones, then topic x template and code-task combinations."""
    out = list(TRAIN_PROMPTS)
    out += [tpl.format(t=t) for t in TOPICS for tpl in TEMPLATES]
    out += [tpl.format(t=t) for t in CODE_TASKS for tpl in CODE_PROMPTS]
    return out


def collect(model_path: str, prompts: Sequence[str], max_tokens: int = 160, n_threads: Optional[int] = None,
            log=print):
    """Greedy answers and their final-norm states: list of (tokens [n], states [n, H]) per prompt."""
    import llama_cpp

    gen = llama_cpp.Llama(model_path, n_ctx=1024, flash_attn=True, verbose=False, n_threads=n_threads)
    emb = llama_cpp.Llama(model_path, n_ctx=1024, n_batch=1024, n_ubatch=1024, embedding=True, verbose=False,
                          n_threads=n_threads, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
    H = llama_cpp.llama_model_n_embd(emb._model.model)
    out = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        text = gen.create_chat_completion(messages=[{"role": "user", "content": p}], max_tokens=max_tokens,
                                          temperature=0.0)["choices"][0]["message"]["content"]
        toks = gen.tokenize(_chat(p, text).encode(), special=True)
        emb.reset()
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(emb._ctx.ctx), -1, -1, -1)
        emb.eval(toks)
        states = np.empty((len(toks), H), dtype=np.float32)
        for j in range(len(toks)):
            states[j] = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(emb._ctx.ctx, j), shape=(H,))
        n_prompt = len(gen.tokenize(_chat(p, "").encode(), special=True))
        out.append((np.array(toks, dtype=np.int32), states, n_prompt))
        log(f"collected {i + 1}/{len(prompts)} ({len(toks)} tokens, {time.perf_counter() - t0:.0f} s)")
    return out


def _chat(user: str, answer: str) -> str:
    # SmolLM2's ChatML template (the default model); other models: pass their template's text.
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}"


def fit_heads(data, n_heads: int = 3, inner: int = 1536, ridge: float = 1.0, seed: int = 0):
    """Ridge fit of each head's W_out over fixed random SiLU features (see module doc)."""
    from .heads import MedusaHeads

    H = data[0][1].shape[1]
    rng = np.random.default_rng(seed)
    w_in = (rng.standard_normal((inner, H)) / np.sqrt(H)).astype(np.float32)
    blocks = []
    for k in range(n_heads):
        X, Y = [], []
        for toks, states, n_prompt in data:
            # h_t for t from the last prompt token on; target state h_{t+1+k}
            t = np.arange(max(n_prompt - 1, 0), len(toks) - 1 - k)
            if len(t) == 0:
                continue
            X.append(states[t])
            Y.append(states[t + 1 + k] - states[t])
        X, Y = np.concatenate(X), np.concatenate(Y)
        F = X @ w_in.T
        F = F / (1.0 + np.exp(-F))
        A = F.T @ F + ridge * len(F) / inner * np.eye(inner, dtype=np.float32)
        w_out = np.linalg.solve(A.astype(np.float64), (F.T @ Y).astype(np.float64)).T.astype(np.float32)
        blocks.append([(w_in, None, np.ascontiguousarray(w_out))])
    return MedusaHeads(blocks, [None] * n_heads, H, format="llama-medusa")


def accuracy(heads, model_path: str, data, top_k: int = 10) -> List[List[float]]:
    """Per-head top-1..top_k hit rates (cumulative) of the heads on (held-out) collected data."""
    from .gguf_heads import read_output_matrix

    proj = read_output_matrix(model_path)
    eng = heads.engine(model_path, heads.hidden_size, proj.shape[0], "i8", backbone_proj=proj)
    hits = np.zeros((heads.n_heads, top_k))
    count = np.zeros(heads.n_heads)
    for toks, states, n_prompt in data:
        t = np.arange(max(n_prompt - 1, 0), len(toks) - 1)
        ids, _ = eng.topk(states[t], top_k)
        for k in range(heads.n_heads):
            ok = t + 2 + k < len(toks)
            target = toks[(t + 2 + k)[ok]]
            found = ids[ok, k, :] == target[:, None]
            hits[k] += np.cumsum(found, axis=1).sum(axis=0)
            count[k] += ok.sum()
    return (hits / np.maximum(count, 1)[:, None]).tolist()


def train(model_path: str, out_path: str, n_heads: int = 3, max_tokens: int = 160, held_out: int = 8,
          prompts: Optional[Sequence[str]] = None, seed: int = 0, log=print):
    prompts = list(prompts or TRAIN_PROMPTS)
    data = collect(model_path, prompts, max_tokens=max_tokens, log=log)
    train_data, test_data = data[:-held_out], data[-held_out:]
    heads = fit_heads(train_data, n_heads=n_heads, seed=seed)
    acc = accuracy(heads, model_path, test_data)
    from .gguf_heads import read_output_matrix

    n_vocab = read_output_matrix(model_path).shape[0]
    heads.save(out_path, extra_meta={"n_vocab": n_vocab, "trained_on": os.path.basename(model_path),
                                     "method": "ridge over random SiLU features, self-distilled",
                                     "top_k_accuracy": acc, "seed": seed})
    log("held-out top-1 accuracy per head: " + ", ".join(f"{a[0]:.2f}" for a in acc))
    return heads, acc
