"""Greedy (and seeded sampled) output of llama_medusa.Llama equals stock llama-cpp-python, on the real model.

Untrained heads accept almost nothing, so acceptance and KV bookkeeping are exercised with OracleDrafter: it
knows the stock continuation and hides it in trees of wrong siblings, at rank 0 or at a random rank.
"""
import gc
import sys

import llama_cpp
import numpy as np
import pytest
from conftest import N_CTX, PROMPTS, THREADS, chat_prompt, stock_tokens
from oracle import OracleDrafter

from llama_medusa import Llama, MedusaHeads
from llama_medusa.drafting.lookup import LookupGate
from llama_medusa.drafting.tree import MC_SIM_7B_63

MID_TREE = MC_SIM_7B_63[:24]  # 25 nodes: several branches at every level


def medusa(model_path, drafter, choices="small", **kw):
    kw.setdefault("n_ctx", N_CTX)
    return Llama(model_path, medusa_heads=drafter, medusa_choices=choices, verbose=False, **THREADS, **kw)


def medusa_tokens(llm, pt, n, **kw):
    return stock_tokens(llm, pt, n, **kw)


def random_heads(n_heads=3, hidden=576, seed=0):
    rng = np.random.default_rng(seed)
    blocks = [[(rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.02,
                rng.standard_normal(hidden).astype(np.float32) * 0.02, None)] for _ in range(n_heads)]
    return MedusaHeads(blocks, [None] * n_heads, hidden)


def test_untrained_heads_greedy_identical(model_path, reference):
    """The real path: native heads over the model's own output matrix, trees verified in one decode."""
    pt, ref = reference(PROMPTS[0], 128)
    llm = medusa(model_path, random_heads(), choices="small")
    assert medusa_tokens(llm, pt, 128, temp=0.0) == ref
    st = llm.medusa_stats
    assert st.steps > 0 and st.tokens == len(ref) - 1 and len(st.head_acceptance) >= 3  # + lookup depths


@pytest.mark.parametrize("user", PROMPTS)
def test_oracle_512_tokens_small_tree(model_path, reference, user):
    pt, ref = reference(user, 512)
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=3), choices="small")
    assert medusa_tokens(llm, pt, 512, temp=0.0) == ref
    st = llm.medusa_stats
    assert st.mean_accepted > 2.0, str(st)  # several tokens accepted per backbone pass
    assert st.redecoded > 0  # later branches won and were re-decoded in order


def test_oracle_wide_tree_and_kv_order(model_path, reference):
    pt, ref = reference(PROMPTS[1], 300)
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=4, p_other_rank=0.5), choices=MID_TREE)
    assert medusa_tokens(llm, pt, 300, temp=0.0) == ref
    assert llm.medusa_stats.mean_accepted > 2.0


def test_accepted_lengths_count_every_pass(model_path, reference):
    """medusa_stats.accepted_lengths: passes by drafted tokens kept. A drafter that is always right on a chain of 3
    has every pass keep all 3 but where the answer ends; over all passes the histogram adds up to the tokens."""
    pt, ref = reference(PROMPTS[1], 90)

    def chain3(p_true):
        llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=3, p_true=p_true, p_other_rank=0.0),
                     choices="chain-3", medusa_lookup=0)
        assert medusa_tokens(llm, pt, 90, temp=0.0) == ref
        st = llm.medusa_stats
        hist = st.accepted_lengths
        assert sum(hist) == st.steps and sum((j + 1) * n for j, n in enumerate(hist)) == st.tokens
        return st, hist

    st, hist = chain3(1.0)
    assert len(hist) == 4 and hist[3] >= st.steps - 1, hist
    # wrong drafts: some passes keep none of them
    st, hist = chain3(0.5)
    assert hist[0] > 0 and st.as_dict()["accepted_lengths"] == hist


def test_full_mc_sim_tree_is_cut_to_the_exact_batch(model_path, reference):
    pt, ref = reference(PROMPTS[2], 48)
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=4), choices="mc_sim_7b_63")
    assert medusa_tokens(llm, pt, 48, temp=0.0) == ref
    assert llm.medusa_stats.batch_tokens <= 63 * llm.medusa_stats.steps


def test_long_generation_2000_tokens(model_path, stock):
    pt = stock.tokenize(chat_prompt("Write a very long story about a lighthouse keeper and a storm.").encode(),
                        special=True)
    ref = stock_tokens(stock, pt, 2100, temp=0.0)
    assert len(ref) >= 2000, "the reference must run past 2000 tokens"
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=4, seed=5), choices="chain-4")
    assert medusa_tokens(llm, pt, 2100, temp=0.0) == ref


def oracle_llm(model_path, stock, user, n, choices="small", **kw):
    pt = stock.tokenize(chat_prompt(user).encode(), special=True)
    ref = stock_tokens(stock, pt, n, temp=0.0)
    return medusa(model_path, OracleDrafter(pt + ref, n_heads=3), choices=choices, **kw), pt, ref


def test_eos_and_chat_completion_identical(model_path, stock):
    msgs = [{"role": "user", "content": "Say hello in one short sentence."}]
    want = stock.create_chat_completion(messages=msgs, max_tokens=200, temperature=0.0)
    pt = stock.tokenize(chat_prompt(msgs[0]["content"]).encode(), special=True)
    ref = stock_tokens(stock, pt, 200, temp=0.0)
    assert llama_cpp.llama_vocab_is_eog(stock._model.vocab, ref[-1]), "the answer should end with EOS"
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=3))
    got = llm.create_chat_completion(messages=msgs, max_tokens=200, temperature=0.0)
    assert got["choices"][0]["message"] == want["choices"][0]["message"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"] == "stop"
    assert got["usage"] == want["usage"]


def test_stop_string_inside_accepted_run(model_path, stock):
    prompt = chat_prompt(PROMPTS[0])
    full = stock.create_completion(prompt, max_tokens=120, temperature=0.0)["choices"][0]["text"]
    stop = full[60:68]  # a string from the middle of the answer
    want = stock.create_completion(prompt, max_tokens=120, temperature=0.0, stop=[stop])
    llm, _, _ = oracle_llm(model_path, stock, PROMPTS[0], 120)
    got = llm.create_completion(prompt, max_tokens=120, temperature=0.0, stop=[stop])
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"] == "stop"


def test_streaming_chunks_identical(model_path, stock):
    prompt = chat_prompt(PROMPTS[2])
    want = [c["choices"][0]["text"] for c in stock.create_completion(prompt, max_tokens=80, temperature=0.0,
                                                                     stream=True)]
    llm, _, _ = oracle_llm(model_path, stock, PROMPTS[2], 80)
    got = [c["choices"][0]["text"] for c in llm.create_completion(prompt, max_tokens=80, temperature=0.0,
                                                                  stream=True)]
    assert got == want


def test_context_window_fills_cleanly(model_path):
    stock_small = llama_cpp.Llama(model_path, n_ctx=256, flash_attn=True, verbose=False, **THREADS)
    prompt = chat_prompt("Write a long essay about the history of bread.")
    want = stock_small.create_completion(prompt, max_tokens=None, temperature=0.0)
    pt = stock_small.tokenize(prompt.encode(), special=True)
    ref = stock_tokens(stock_small, pt, 256 - len(pt), temp=0.0)
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=4), choices=MID_TREE, n_ctx=256)
    got = llm.create_completion(prompt, max_tokens=None, temperature=0.0)
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"] == "length"
    assert got["usage"]["total_tokens"] == want["usage"]["total_tokens"] == 256
    with pytest.raises(ValueError, match="exceed context window"):
        llm.create_completion("word " * 400, max_tokens=4)


def test_prefix_reuse_and_reset_across_calls(model_path, stock):
    """A second turn reuses the cached prefix (with the extra sequences in the cache) and still equals stock."""
    first = chat_prompt("Name three planets.")
    llm = medusa(model_path, random_heads(seed=3), choices="small")
    for model in (stock, llm):
        model.reset()
    a_stock = stock.create_completion(first, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    a_med = llm.create_completion(first, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    assert a_med == a_stock
    second = first + a_stock + "<|im_end|>\n<|im_start|>user\nAnd three moons?<|im_end|>\n<|im_start|>assistant\n"
    b_stock = stock.create_completion(second, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    b_med = llm.create_completion(second, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    assert b_med == b_stock
    llm.reset()
    assert llm.create_completion(first, max_tokens=40, temperature=0.0)["choices"][0]["text"] == a_stock


def test_seeded_sampling_identical_to_stock(model_path, stock):
    """temperature > 0: each token is sampled once, in order, by the same sampler chain from the same logits."""
    prompt = chat_prompt(PROMPTS[0])
    kw = dict(max_tokens=120, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=1234)
    want = stock.create_completion(prompt, **kw)["choices"][0]["text"]
    pt = stock.tokenize(prompt.encode(), special=True)
    ref = stock.tokenize(want.encode(), add_bos=False, special=True)
    llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=3))
    got = llm.create_completion(prompt, **kw)["choices"][0]["text"]
    assert got == want
    assert llm.medusa_stats.mean_accepted > 1.5


def test_grammar_identical(model_path, stock):
    grammar = llama_cpp.LlamaGrammar.from_string('root ::= "{" ws "\\"name\\":" ws "\\"" [a-zA-Z ]+ "\\"" ws "}"\nws ::= [ ]?',
                                                 verbose=False)
    prompt = chat_prompt("Give me a JSON object with the name of a famous scientist.")
    want = stock.create_completion(prompt, max_tokens=40, temperature=0.0, grammar=grammar)["choices"][0]["text"]
    llm = medusa(model_path, random_heads(seed=4))
    got = llm.create_completion(prompt, max_tokens=40, temperature=0.0, grammar=grammar)["choices"][0]["text"]
    assert got == want and got.startswith("{")


def test_logprobs_identical(model_path):
    kw = dict(n_ctx=1024, flash_attn=True, verbose=False, **THREADS, logits_all=True)
    stock_lp = llama_cpp.Llama(model_path, **kw)
    prompt = chat_prompt(PROMPTS[1])
    want = stock_lp.create_completion(prompt, max_tokens=30, temperature=0.0, logprobs=3)["choices"][0]
    pt = stock_lp.tokenize(prompt.encode(), special=True)
    ref = stock_tokens(stock_lp, pt, 30, temp=0.0)
    llm = Llama(model_path, medusa_heads=OracleDrafter(pt + ref, n_heads=3), **kw)
    got = llm.create_completion(prompt, max_tokens=30, temperature=0.0, logprobs=3)["choices"][0]
    assert got["text"] == want["text"]
    assert got["logprobs"]["tokens"] == want["logprobs"]["tokens"]
    np.testing.assert_array_equal(got["logprobs"]["token_logprobs"], want["logprobs"]["token_logprobs"])
    assert got["logprobs"]["top_logprobs"] == want["logprobs"]["top_logprobs"]


def test_typical_acceptance_is_opt_in_and_faster(model_path, stock):
    """Typical acceptance keeps more drafted tokens than the same run without it (same drafts, seed and
    temperature), and without it sampled output is stock's, draw for draw."""
    prompt = chat_prompt(PROMPTS[2])
    pt = stock.tokenize(prompt.encode(), special=True)
    ref = stock_tokens(stock, pt, 100, temp=0.0)
    runs = {}
    for name, typical in (("off", {}), ("on", dict(posterior_threshold=0.09, posterior_alpha=0.3))):
        llm = medusa(model_path, OracleDrafter(pt + ref, n_heads=3, p_true=1.0, p_other_rank=0.0), **typical)
        text = llm.create_completion(prompt, max_tokens=60, temperature=0.7, seed=7)["choices"][0]["text"]
        runs[name] = (text, llm.medusa_stats.mean_accepted)
        llm.close()
    assert runs["off"][0] == stock.create_completion(prompt, max_tokens=60, temperature=0.7, seed=7)["choices"][0]["text"]
    assert runs["on"][0].strip()
    assert runs["on"][1] > runs["off"][1] + 0.1, runs
    with pytest.raises(ValueError, match="both posterior_threshold and posterior_alpha"):
        medusa(model_path, random_heads(), posterior_threshold=0.1)


def test_without_heads_it_is_stock(model_path):
    plain = Llama(model_path, n_ctx=512, verbose=False, **THREADS)
    ref = llama_cpp.Llama(model_path, n_ctx=512, verbose=False, **THREADS)
    prompt = chat_prompt(PROMPTS[0])
    assert plain.create_completion(prompt, max_tokens=30, temperature=0.0)["choices"][0]["text"] == \
        ref.create_completion(prompt, max_tokens=30, temperature=0.0)["choices"][0]["text"]
    assert plain.medusa_tree is None
    with pytest.warns(RuntimeWarning, match="medusa_choices, medusa_lookup given without medusa_heads"):
        forgot = Llama(model_path, n_ctx=256, verbose=False, medusa_choices="chain-2", medusa_lookup=4, **THREADS)
    assert forgot.medusa_tree is None


def test_a_draft_model_gives_way_to_the_heads(model_path, reference):
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    with pytest.warns(RuntimeWarning, match="draft_model is not used with medusa_heads"):
        llm = medusa(model_path, random_heads(), draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4))
    assert llm.draft_model is None and not llm._logits_all
    pt, out = reference(PROMPTS[0], 40)
    assert medusa_tokens(llm, pt, 40, temp=0.0) == out


@pytest.mark.parametrize("pooling", [llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED, llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                     llama_cpp.LLAMA_POOLING_TYPE_LAST])
def test_embeddings_equal_stock_and_leave_generation_alone(model_path, reference, pooling):
    """embedding=True keeps create_embedding working although the tree context pools nothing; each text equals
    stock's embedding of that text alone (stock's own unpooled multi-text reader returns shifted rows)."""
    texts = ["hello world", "The cat sat on the mat and looked at the dog.", "x"]
    ref = llama_cpp.Llama(model_path, n_ctx=256, flash_attn=True, embedding=True, pooling_type=pooling,
                          verbose=False, **THREADS)
    llm = medusa(model_path, random_heads(), embedding=True, pooling_type=pooling)
    for normalize in (False, True):
        got = llm.embed(texts, normalize=normalize)
        for text, rows in zip(texts, got):
            want = np.asarray(ref.embed(text, normalize=normalize))
            assert np.asarray(rows).shape == want.shape
            np.testing.assert_allclose(np.asarray(rows), want, rtol=1e-5, atol=1e-5)
    assert llm.create_embedding(texts)["usage"] == ref.create_embedding(texts)["usage"]
    pt, out = reference(PROMPTS[0], 40)
    assert medusa_tokens(llm, pt, 40, temp=0.0) == out  # the embedding decodes left the tree context intact


def test_embeddings_refused_as_stock_does(model_path):
    with pytest.raises(RuntimeError, match="created with embedding=True"):
        medusa(model_path, random_heads(), n_ctx=256).embed("hello")
    reranker = medusa(model_path, random_heads(), n_ctx=256, embedding=True,
                      pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK)
    with pytest.raises(ValueError, match="reranking.*not available with medusa_heads"):
        reranker.embed("hello")


@pytest.mark.parametrize("choices", ["auto", "small"])
def test_verify_batches_stay_within_n_batch(model_path, choices):
    """llama.cpp asserts (and takes the process down) when one decode holds more than n_batch tokens: the cost
    curve, the tree and the lookup branch all stay within it."""
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    pt = llama_cpp.Llama(model_path, vocab_only=True, verbose=False).tokenize(
        chat_prompt(PROMPTS[2]).encode(), special=True)
    ref = stock_tokens(llama_cpp.Llama(model_path, n_ctx=N_CTX, n_batch=8, flash_attn=True, verbose=False,
                                       **THREADS), pt, 60, temp=0.0)
    llm = Llama(model_path, medusa_heads=SMOLLM2_HEADS, medusa_choices=choices, n_ctx=N_CTX,
                n_batch=8, verbose=False, **THREADS)
    assert medusa_tokens(llm, pt, 60, temp=0.0) == ref
    with pytest.raises(ValueError, match="at most 1 token.*n_batch.*at least 2"):
        medusa(model_path, random_heads(), n_ctx=256, n_batch=1)
    with pytest.raises(ValueError, match="leaves.*raise n_batch or choose a smaller tree"):
        medusa(model_path, random_heads(), choices=MID_TREE, n_ctx=256, n_batch=4)


def test_pickle_keeps_the_heads_and_the_users_context(model_path, reference):
    """Pickling re-runs __init__ with __getstate__'s arguments: stock's alone would bring the model back plain,
    with embeddings off and pooling NONE (what the tree context became)."""
    import pickle

    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    llm = Llama(model_path, medusa_heads=SMOLLM2_HEADS, medusa_choices="small", n_ctx=N_CTX,
                embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False, **THREADS)
    copy = pickle.loads(pickle.dumps(llm))
    assert type(copy) is Llama and len(copy.medusa_tree) == len(llm.medusa_tree) == 8
    assert copy.embed("hello world") == llm.embed("hello world")  # pooled: one vector, not per-token rows
    pt, out = reference(PROMPTS[0], 40)
    assert medusa_tokens(copy, pt, 40, temp=0.0) == out
    assert copy.medusa_stats.steps < len(out)  # it speculated


@pytest.mark.parametrize("bad, message", [
    (dict(medusa_top_k=0), "medusa_top_k must be an integer >= 1"),
    (dict(medusa_top_k=2.5), "medusa_top_k must be an integer >= 1"),
    (dict(medusa_max_batch=None), "medusa_max_batch must be an integer"),
    (dict(medusa_lookup=True), "medusa_lookup must be an integer >= 0"),
    (dict(posterior_threshold=-1.0, posterior_alpha=0.3), r"posterior_threshold must be in \(0, 1\]"),
    (dict(posterior_threshold=0.09, posterior_alpha=3), r"posterior_alpha must be in \(0, 1\]"),
])
def test_bad_medusa_arguments_are_refused_before_the_model_loads(bad, message, monkeypatch):
    unraisable = []  # what the half-made object's __del__ raises
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(ValueError, match=message):
        Llama("/nonexistent.gguf", medusa_heads=random_heads(), **bad)  # refused before the path is even opened
    with pytest.raises(TypeError, match='medusa_heads must be "auto", a heads file path.*got int'):
        Llama("/nonexistent.gguf", medusa_heads=123)
    gc.collect()
    assert not unraisable, unraisable[0].exc_value


def test_mismatched_heads_are_rejected(model_path, tmp_path):
    with pytest.raises(ValueError, match="hidden size 64.*576"):
        medusa(model_path, random_heads(hidden=64), n_ctx=256)
    wrong_vocab = MedusaHeads([[]], [np.zeros((1000, 576), np.float32)], 576)
    with pytest.raises(ValueError, match="1000 tokens.*49152"):
        medusa(model_path, wrong_vocab, n_ctx=256)
    with pytest.raises(ValueError, match="does not exist"):
        medusa(model_path, str(tmp_path / "nope.safetensors"), n_ctx=256)
    with pytest.raises(ValueError, match="only 3 heads"):
        medusa(model_path, random_heads(), choices="chain-4", n_ctx=256)


def test_shipped_heads_with_auto_tree(model_path, reference):
    """The token-conditioned heads that ship beside the default EAGLE heads, medusa_choices="auto": greedy
    identical to stock."""
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    heads = MedusaHeads.load(SMOLLM2_HEADS)
    assert heads.hidden_size == 576 and heads.meta.get("top_k_accuracy")
    pt, ref = reference(PROMPTS[1], 160)
    llm = Llama(model_path, medusa_heads=heads, verbose=False, n_ctx=N_CTX, **THREADS)
    auto = llm.medusa_auto
    assert auto is not None and auto["perfect_bound"] >= auto["predicted_speedup"] >= 1.0
    if auto.get("per_step_tree"):  # grown every step: the tree held is the largest one a step may grow
        assert auto["choices"] and len(llm.medusa_tree) == auto["per_step_tree"]["max_nodes"] + 1
    else:
        assert len(llm.medusa_tree) == len(auto["choices"]) + 1
    assert medusa_tokens(llm, pt, 160, temp=0.0) == ref


def test_generate_needs_a_token(model_path):
    llm = medusa(model_path, random_heads(), n_ctx=256)
    with pytest.raises(ValueError, match="at least one token"):
        next(llm.generate([], temp=0.0))


def test_shipped_conditioned_heads_on_a_fixed_tree(model_path, reference):
    """The shipped (token-conditioned) heads on a tree that branches along the top-1 chain: greedy identical to
    stock, with drafts accepted (the heads see the root and their predecessors' drafts)."""
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    heads = MedusaHeads.load(SMOLLM2_HEADS)
    assert heads.conditioned
    pt, ref = reference(PROMPTS[0], 128)
    tree = [[r] for r in range(4)] + [[0, r] for r in range(3)] + [[0, 0, 0]]
    llm = Llama(model_path, medusa_heads=heads, medusa_choices=tree, verbose=False, n_ctx=N_CTX, **THREADS)
    assert medusa_tokens(llm, pt, 128, temp=0.0) == ref
    st = llm.medusa_stats
    assert st.mean_accepted > 1.2 and st.head_acceptance[0] > 0.2, st


REPEAT_PROMPT = "Write an HTML page with a table of five fruits and their colors."


@pytest.mark.parametrize("choices", ["small", []])
def test_lookup_branch_identical_and_accepted(model_path, reference, choices):
    """The context-lookup branch grafted onto the tree (and, with no heads tree at all, on its own): greedy
    identical to stock, its nodes accepted on a repetitive answer (untrained heads accept almost nothing here);
    with medusa_lookup=0 no lookup node is proposed."""
    pt, ref = reference(REPEAT_PROMPT, 96)
    llm = medusa(model_path, random_heads(), choices=choices, medusa_lookup=8)
    assert medusa_tokens(llm, pt, 96, temp=0.0) == ref
    st = llm.medusa_stats
    assert st.lookup_accepted > 20 and st.mean_accepted > 1.4, st
    off = medusa(model_path, random_heads(), choices=choices or "small", medusa_lookup=0)
    assert medusa_tokens(off, pt, 96, temp=0.0) == ref
    assert off.medusa_stats.lookup_nodes == 0 and off.medusa_stats.mean_accepted < st.mean_accepted
    with pytest.raises(ValueError, match="medusa_lookup must be an integer >= 0"):
        medusa(model_path, random_heads(), medusa_lookup=-1, n_ctx=256)


def test_lookup_branch_placed_first_keeps_its_tokens_and_output(model_path, reference):
    """The lookup branch before the heads' children (LookupGate.first) or after them: both identical to stock;
    first, its accepted tokens directly follow the root in the batch and stay in the cache instead of being
    decoded again next step."""
    pt, ref = reference(REPEAT_PROMPT, 96)
    redecoded = {}
    for place in ("first", "after"):
        llm = medusa(model_path, random_heads(), choices="small", medusa_lookup=8)
        llm._medusa.lookup.first = lambda matched, depth, bucket, f=(place == "first"): f
        assert medusa_tokens(llm, pt, 96, temp=0.0) == ref, place
        st = llm.medusa_stats
        assert st.lookup_accepted > 20, st
        redecoded[place] = st.redecoded
    assert redecoded["first"] < redecoded["after"] / 2, redecoded


def test_shipped_heads_best_tree_with_lookup(model_path, reference):
    """The acceptance configuration of the bench (a greedy tree of 52 nodes from the shipped heads' accuracies,
    every node conditioned on its own path, plus the lookup branch): identical to stock, over 2 tokens per pass."""
    from llama_medusa.drafting import autotree
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    heads = MedusaHeads.load(SMOLLM2_HEADS)
    tree = [p for p, _ in autotree.grow_tree(autotree.accuracy_table_of(heads, 10), 52)]
    pt, ref = reference(PROMPTS[2], 128)
    llm = Llama(model_path, medusa_heads=heads, medusa_choices=tree, verbose=False, n_ctx=N_CTX, **THREADS)
    assert medusa_tokens(llm, pt, 128, temp=0.0) == ref
    assert llm.medusa_stats.mean_accepted > 2.0, llm.medusa_stats


def test_lookup_alone_with_the_models_answers(model_path, reference):
    """No heads tree (what "auto" picks where no tree pays, e.g. F16 weights here), the lookup priced with a cost
    curve whose second token is expensive: steps speculate only where the context or the model's earlier answers
    (stored in the shipped heads) make a draft likely; greedy output identical to stock, answer tokens accepted,
    and far fewer lookup tokens verified than an ungated branch would."""
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    pt, ref = reference(PROMPTS[1], 128)
    heads = MedusaHeads.load(SMOLLM2_HEADS)
    assert heads.answers is not None and len(heads.answers) > 100_000
    llm = Llama(model_path, medusa_heads=heads, medusa_choices=[], verbose=False, n_ctx=N_CTX, **THREADS)
    old = llm._medusa.lookup
    llm._medusa.lookup = LookupGate(old.max_tokens, cost={1: 0.010, 2: 0.014, 3: 0.015, 4: 0.016, 8: 0.022},
                                    fixed_s=0.0008, heads_top1=old.heads_top1, answers=old.answers)
    assert medusa_tokens(llm, pt, 128, temp=0.0) == ref
    st = llm.medusa_stats
    assert st.answers_nodes > 0 and st.answers_accepted > 0 and st.lookup_accepted > st.answers_accepted, st
    assert st.mean_accepted > 1.3 and st.lookup_nodes < 8 * st.steps / 2, st  # the gate grafts far from 8 a step


def test_time_split_counts_the_heads_once(model_path, reference, monkeypatch):
    """The decoder's time split: the heads' call is in time_heads and not also in time_bookkeeping. The decoder's
    clock is a fake that moves only inside the heads' call (one unit each), so the figures are exact."""
    from llama_medusa.decoder import loop

    clock = [0.0]
    monkeypatch.setattr(loop, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    pt, ref = reference(PROMPTS[0], 8)
    llm = medusa(model_path, random_heads(), choices="chain-1", medusa_lookup=0)
    fill, calls = llm._medusa.fill, []

    def counted_fill(*a, **k):
        calls.append(1)
        clock[0] += 1.0
        return fill(*a, **k)

    llm._medusa.fill = counted_fill
    assert medusa_tokens(llm, pt, 8, temp=0.0) == ref
    st = llm.medusa_stats
    assert calls and st.time_heads == len(calls)
    assert st.time_bookkeeping == 0.0 and st.time_verify == 0.0 and st.time_sample == 0.0, st


def _prompt_with_a_picture(llm, embd_rows: np.ndarray) -> list:
    """What llama-cpp-python's multimodal chat handlers (mtmd) do: text through eval(), the image's embeddings
    decoded straight into sequence 0 (mtmd_helper_eval_chunk_single), then n_tokens moved past them. The
    "picture" here is a caption's token embeddings, so the answer is about it."""
    import ctypes

    llm.reset()
    llm._ctx.kv_cache_clear()
    llm.eval(llm.tokenize(b"<|im_start|>user\nDescribe this picture: ", special=True))
    n, n_embd = embd_rows.shape
    b = llama_cpp.llama_batch_init(n, n_embd, 1)
    try:
        ctypes.memmove(b.embd, np.ascontiguousarray(embd_rows, dtype=np.float32).ctypes.data, embd_rows.size * 4)
        for i in range(n):
            b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = llm.n_tokens + i, 1, 0, 0
        b.n_tokens = n
        assert llama_cpp.llama_decode(llm._ctx.ctx, b) == 0
    finally:
        llama_cpp.llama_batch_free(b)
    llm.input_ids[llm.n_tokens : llm.n_tokens + n] = 0  # stock leaves these ids unset
    llm.n_tokens += n
    llm.eval(llm.tokenize(b" in detail.<|im_end|>\n<|im_start|>assistant\n", add_bos=False, special=True))
    return llm.input_ids[: llm.n_tokens].tolist()


def test_cells_decoded_past_eval_reach_every_leaf(model_path, stock):
    """Image embeddings decoded into sequence 0 by a multimodal handler used to be missing from the other
    leaves' sequences: output left stock's at its third token. generate() now mirrors the whole prefix."""
    import gguf

    caption = stock.tokenize(b"a red fox jumping over a sleeping brown dog in a sunny green field", add_bos=False)
    t = next(t for t in gguf.GGUFReader(model_path).tensors if t.name == "token_embd.weight")
    rows = gguf.quants.dequantize(t.data[caption], t.tensor_type)
    pt = _prompt_with_a_picture(stock, rows)
    ref = stock_tokens(stock, pt, 200, temp=0.0)
    assert "fox" in stock.detokenize(ref).decode()  # the picture reached the answer
    drafter = OracleDrafter(pt + ref, n_heads=4, p_other_rank=0.5)
    llm = medusa(model_path, drafter, choices=MID_TREE)
    assert _prompt_with_a_picture(llm, rows) == pt
    assert medusa_tokens(llm, pt, 200, temp=0.0) == ref
    assert llm.medusa_stats.mean_accepted > 2.0
