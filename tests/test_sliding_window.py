"""Sliding-window attention models: the tree's KV bookkeeping under llama.cpp's SWA cache.

No SWA model ships in a wheel, so the model is synthetic: a small gemma3 (16-token window on five of six layers)
written by llama_medusa.synth with SmolLM2's tokenizer and requantised to Q4_1 (F16's batched kernels are not
bit-exact against its single-token ones, Q4_1's are up to 63 tokens). Generations run far past the window.
"""
import warnings

import llama_cpp
import pytest
from conftest import THREADS, chat_prompt, stock_tokens
from oracle import OracleDrafter

from llama_medusa import Llama
from llama_medusa.commands.requantize import requantize
from llama_medusa.drafting.tree import MC_SIM_7B_63
from llama_medusa.synth import write_gemma3

N_CTX, N = 1024, 900
USER = "Explain why the sky is blue to a ten-year-old."


@pytest.fixture(scope="module")
def swa_model(model_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("swa")
    f16 = write_gemma3(str(d / "gemma3-f16.gguf"), tokenizer_from=model_path, window=16)
    return requantize(f16, str(d / "gemma3-q4_1.gguf"), "q4_1")


@pytest.fixture(scope="module")
def swa_reference(swa_model):
    """Stock greedy continuation with llama.cpp's default full-size SWA cache."""
    stock = llama_cpp.Llama(swa_model, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS)
    assert llama_cpp.llama_model_n_swa(stock._model.model) == 16
    pt = stock.tokenize(chat_prompt(USER).encode(), special=True)
    ref = stock_tokens(stock, pt, N, temp=0.0)
    assert len(ref) == N and len(set(ref)) > N // 2, "the synthetic model should not loop"
    stock.close()
    return pt, ref


@pytest.mark.parametrize("choices", ["chain-4", MC_SIM_7B_63[:24]], ids=["chain-4", "25-node tree"])
def test_swa_model_greedy_identical(swa_model, swa_reference, choices):
    pt, ref = swa_reference
    llm = Llama(swa_model, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS,
                medusa_heads=OracleDrafter(pt + ref, n_heads=4, p_other_rank=0.5), medusa_choices=choices)
    assert stock_tokens(llm, pt, N, temp=0.0) == ref
    assert llm.medusa_stats.mean_accepted > 2.0 and llm.medusa_stats.redecoded > 0
    assert stock_tokens(llm, pt, N, temp=0.0) == ref  # again, reusing the cached prefix


def test_window_sized_swa_cache_is_replaced_with_a_warning(swa_model, swa_reference):
    """swa_full=False used to fail mid-answer (llama_decode found no slot: cells shared by the tree's sequences are
    never recycled); the tree context now takes the full-size cache and says so. Its output is then stock's with
    the full-size cache (a window-sized one recycles cells out of position order, which moves stock's own greedy
    output at near-ties)."""
    pt, ref = swa_reference
    with pytest.warns(RuntimeWarning, match="swa_full=False does not fit a Medusa tree"):
        llm = Llama(swa_model, n_ctx=N_CTX, flash_attn=True, verbose=False, swa_full=False, **THREADS,
                    medusa_heads=OracleDrafter(pt + ref, n_heads=4, p_other_rank=0.5), medusa_choices="chain-4")
    assert llm.context_params.swa_full
    assert stock_tokens(llm, pt, N, temp=0.0) == ref
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full-size cache asked for (the default) is taken without a word
        Llama(swa_model, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS,
              medusa_heads=OracleDrafter(pt + ref, n_heads=4), medusa_choices="chain-4").close()
