"""The hardware-aware tree choice: direction of its answers on known cost curves, and its accuracy model."""
import numpy as np
import pytest

from llama_medusa.drafting import autotree


def test_rank_accuracy_from_cumulative():
    acc = autotree.rank_accuracy([[0.5, 0.7, 0.8], [0.2, 0.3, 0.3]])
    np.testing.assert_allclose(acc, [[0.5, 0.2, 0.1], [0.2, 0.1, 0.0]])


def test_grow_tree_is_prefix_closed_and_greedy():
    acc = autotree.prior_accuracy(3)
    nodes = autotree.grow_tree(acc, 20)
    paths = [p for p, _ in nodes]
    assert paths[0] == (0,)
    for i, p in enumerate(paths):
        assert len(p) == 1 or p[:-1] in paths[:i]  # parents first
    probs = [q for _, q in nodes]
    assert probs == sorted(probs, reverse=True)


def test_steep_cost_picks_small_tree_flat_cost_picks_big_tree():
    acc = autotree.prior_accuracy(4)
    flat = {T: 0.010 * (1 + 0.01 * (T - 1)) for T in range(1, 64)}  # GPU-like: 64 tokens ~1.6x one
    steep = {T: 0.010 * (1 + 0.9 * (T - 1)) for T in range(1, 64)}  # 2-core CPU, quantised weights
    big = autotree.choose(acc, flat, t_heads=0.0005)
    small = autotree.choose(acc, steep, t_heads=0.0005)
    assert len(big["choices"]) >= 8 and big["predicted_speedup"] > 1.5
    assert len(small["choices"]) < len(big["choices"]) and small["predicted_speedup"] < 1.1
    assert big["perfect_bound"] >= big["predicted_speedup"]
    # the decoder's own per-step time is priced into every tree: a slow enough loop makes plain decoding win
    assert autotree.choose(acc, flat, t_heads=0.0005, step_overhead=0.05)["choices"] == []


def test_no_winning_tree_means_plain_decoding():
    acc = autotree.prior_accuracy(3) * 0.1  # weak heads
    linear = {T: 0.01 * T for T in range(1, 64)}  # every token costs a full pass
    r = autotree.choose(acc, linear, t_heads=0.002)
    assert r["choices"] == [] and r["predicted_speedup"] == 1.0


def test_interpolation():
    cost = {1: 1.0, 4: 4.0, 8: 6.0}
    assert autotree.interpolate(cost, 2) == 2.0
    assert autotree.interpolate(cost, 6) == 5.0
    assert autotree.interpolate(cost, 16) == 12.0


def test_per_row_heads_cost_prices_branching():
    """Token-conditioned heads pay one evaluation row per node with children: an expensive row makes the chosen
    tree branch from fewer nodes than a free one, and the predicted step time includes exactly that cost."""
    acc = autotree.prior_accuracy(3)
    flat = {T: 0.010 * (1 + 0.01 * (T - 1)) for T in range(1, 64)}
    free = autotree.choose(acc, flat, t_heads=autotree.HeadsCost(per_call=1e-4, per_row=0.0))
    dear = autotree.choose(acc, flat, t_heads=autotree.HeadsCost(per_call=1e-4, per_row=1.5e-3))
    parents = lambda r: len({tuple(p[:-1]) for p in r["choices"]})
    assert parents(dear) < parents(free)
    cost = autotree.HeadsCost(per_call=1e-4, per_row=1.5e-3)
    paths = [tuple(p) for p in dear["choices"]]
    assert abs(dear["heads_s"] - (1e-4 * max(map(len, paths)) + 1.5e-3 * parents(dear))) < 1e-12
    assert cost([]) == 0.0 and autotree.HeadsCost(fixed=0.002)([(0,), (1, 2)]) == 0.002


def test_lookup_gate_adds_nodes_by_cost_and_learns_hit_rates():
    from llama_medusa.drafting.lookup import LookupGate, context_bucket

    flat = {T: 0.010 * (1 + 0.02 * (T - 1)) for T in range(1, 64)}
    steep = {T: 0.010 * (1 + 0.6 * (T - 1)) for T in range(1, 64)}  # a guess must be likely to pay
    b = context_bucket(3)
    assert LookupGate(8).count(batch=1, matched=0, new=6, bucket=b) == 6  # no cost curve: every proposed token
    assert LookupGate(8, flat).count(batch=1, matched=0, new=6, bucket=b) == 6
    gate = LookupGate(8, steep)
    assert gate.count(batch=1, matched=0, new=6, bucket=b) == 0
    for _ in range(200):  # a text where 3-token matches are always right
        gate.observe([5, 6, 7, 8], [5, 6, 7, 8, 9], b)
    assert gate.rate(0, b) > 0.95 and gate.rate(3, b) > 0.95 and gate.rate(5, b) < 0.5  # unseen depths: the prior
    assert gate.rate(0, context_bucket(1)) < 0.2  # other buckets keep their own rates
    assert gate.count(batch=1, matched=0, new=4, bucket=b) == 4
    assert gate.count(batch=1, matched=0, new=4, bucket=context_bucket(1)) == 0
    seen, hits = gate.seen[b].copy(), gate.hits[b].copy()
    gate.observe([5, 1], [5, 6, 7], b)  # right at depth 1, wrong at 2, depth 3 not proposed
    assert list(gate.seen[b] - seen)[:3] == [1, 1, 0] and list(gate.hits[b] - hits)[:3] == [1, 0, 0]
    gate.reset()
    assert gate.count(batch=1, matched=0, new=4, bucket=b) == 0


def test_lookup_gate_takes_the_best_count_not_the_first_break_even():
    """On a curve where the second token of a batch costs most and the next ones little (llama.cpp's F16 on these
    CPUs), a one-at-a-time rule stops before a chain that pays; the gate takes the count that maximises the
    step's rate, and nothing that gains less than MIN_GAIN."""
    from llama_medusa.drafting import lookup

    f16 = {1: 0.010, 2: 0.014, 3: 0.0150, 4: 0.0158, 6: 0.018, 8: 0.0218}
    gate = lookup.LookupGate(8, f16)
    b = lookup.context_bucket(6)
    gate.hits[b], gate.seen[b] = np.array([0.40, 0.38, 0.36, 0.34, 0.3, 0.2, 0.1, 0.1]), np.ones(8)
    # one token: 1.40 / 1.40 t(1), no gain; four: 2.48 / 1.58 t(1)
    assert gate.count(batch=1, matched=0, new=1, bucket=b) == 0
    assert gate.count(batch=1, matched=0, new=8, bucket=b) >= 4
    flat = {T: 0.010 * (1 + 0.001 * (T - 1)) for T in range(1, 10)}
    meh = lookup.LookupGate(8, flat)
    meh.hits[b], meh.seen[b] = np.full(8, 0.01), np.ones(8)  # +1% expected tokens for +0.1% time: below MIN_GAIN
    assert meh.count(batch=1, matched=0, new=1, bucket=b) == 0


def test_lookup_gate_chooses_between_the_context_and_the_answers():
    from llama_medusa.drafting import lookup
    from llama_medusa.drafting.answers import AnswerIndex, concatenate

    index = AnswerIndex(concatenate([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [7, 8, 9]]))
    gate = lookup.LookupGate(8, answers=index)
    # the context repeats only its last token (a 1-token match, 14% right); the answers know 2 3 4 -> 5 6
    chain, b = gate.draft(np.array([4, 9, 2, 3, 4]))
    assert chain == [5, 6] and b == lookup.answers_bucket(1.0, 3)
    # a 6-token repeat in the context outranks the answers (the answers are not even asked)
    ctx = np.array([2, 3, 4, 11, 12, 13, 14, 2, 3, 4, 11, 12, 13])
    chain, b = gate.draft(ctx)
    assert chain[:1] == [14] and b == lookup.context_bucket(6)
    assert gate.draft(np.array([20, 21, 22])) == ([], -1)
    assert lookup.answers_bucket(0.2, 3) == lookup.CONTEXT_NGRAM
    assert lookup.answers_bucket(0.95, 6) == lookup.N_BUCKETS - 1
    assert len(lookup.PRIOR_HITS) == lookup.N_BUCKETS


def test_cost_cache_is_measured_again_on_a_machine_of_another_speed(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_MEDUSA_CACHE", str(tmp_path))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 10)

    class Fake:  # what cost_curve reads of a Llama
        model_path, n_threads, n_threads_batch = str(model), 1, 2

        class model_params:
            n_gpu_layers = 0

        def __init__(self, t1, slope=0.5):
            self.t1, self.slope, self.calls = t1, slope, []
            self.backbone = self  # the backbone's measure_verify is what it times

        def measure_verify(self, sizes, repeats):
            self.calls.append(list(sizes))
            return {T: self.t1 * (1 + self.slope * (T - 1)) for T in sizes}

    first = Fake(0.010)
    curve = autotree.cost_curve(first, sizes=(1, 2, 4))
    assert first.calls == [[1, 2, 4]] and curve[1] == 0.010
    same = Fake(0.011)  # within the tolerance: the cached curve, after a quick t(1) and t(2)
    assert autotree.cost_curve(same, sizes=(1, 2, 4)) == curve and same.calls == [[1, 2]]
    slower = Fake(0.015)  # another machine with the same CPU name: measured again
    again = autotree.cost_curve(slower, sizes=(1, 2, 4))
    assert slower.calls == [[1, 2], [1, 2, 4]] and again[1] == 0.015
    steeper = Fake(0.015, slope=0.7)  # the same t(1), a second token 13% dearer (t(2)/t(1) 1.7 against 1.5)
    again = autotree.cost_curve(steeper, sizes=(1, 2, 4))
    assert steeper.calls == [[1, 2], [1, 2, 4]] and again[2] == pytest.approx(0.015 * 1.7)


def test_lookup_branch_goes_first_when_likelier_than_the_heads_child():
    from llama_medusa.drafting.lookup import LookupGate

    b = 2
    gate = LookupGate(8, heads_top1=[0.4, 0.3])
    for _ in range(40):  # a text the lookup keeps guessing: its hit rates rise to ~1
        gate.observe([1, 2, 3], [1, 2, 3, 4], b)
    assert gate.first(0, 0, b) and gate.first(2, 1, b) and gate.first(0, 5, b)  # beyond the heads: always first
    cold = LookupGate(8, heads_top1=[0.9, 0.9])
    for _ in range(40):  # a text it keeps missing
        cold.observe([7, 8], [1, 2, 3], b)
    assert not cold.first(0, 0, b) and not cold.first(1, 1, b)
    assert cold.first(0, 2, b)  # no head fills depth 2: the branch has that node's children to itself


def _repeating_text(seed=0, n_prompt=20, n_answer=160):
    """A prompt of distinct tokens, then an answer that repeats it twice with some fresh tokens between."""
    rng = np.random.default_rng(seed)
    prompt = rng.choice(np.arange(100, 1000), n_prompt, replace=False)
    fresh = rng.choice(np.arange(1000, 2000), n_answer, replace=False)
    answer = np.concatenate([fresh[:30], prompt, fresh[30:60], prompt, fresh[60:]])[:n_answer]
    return np.concatenate([prompt, answer]).astype(np.int32), n_prompt


def test_lookup_replay_follows_the_cost_curve():
    """Replaying the gate over a text: long repeats pay where extra tokens of a batch are nearly free, and nothing
    pays where a batch of T costs T tokens (the gate then never speculates: exactly plain decoding)."""
    from llama_medusa.drafting.lookup import LookupGate

    texts = [_repeating_text(s) for s in range(3)]
    flat = {T: 0.010 * (1 + 0.02 * (T - 1)) for T in range(1, 10)}
    linear = {T: 0.010 * T for T in range(1, 10)}
    fast = LookupGate(8, flat).replay(texts)
    assert len(fast) == 3 and min(fast) > 1.2
    assert np.allclose(LookupGate(8, linear).replay(texts), 1.0)
    # against stock's loop: the decoder's plain steps pay its fixed time, stock's tokens their own
    assert np.allclose(LookupGate(8, linear, fixed_s=0.001).replay(texts, stock_token_s=0.0004), 0.0104 / 0.011)
    gate = LookupGate(8, flat)
    gate.replay(texts)
    assert np.array_equal(gate.hits, LookupGate(8, flat).hits)  # replay leaves no hit rates behind
    with pytest.raises(ValueError, match="cost curve"):
        LookupGate(8).replay(texts)


def test_lookup_oracle_bounds_every_gate():
    """The oracle is the cheapest way through a text with the lookup's drafts: never below the gate's replay, exactly
    plain decoding where a batch costs its tokens, and every step a full chain where batches are free."""
    from llama_medusa.drafting.lookup import LookupGate

    texts = [_repeating_text(s) for s in range(3)]
    curves = [{T: 0.010 * (1 + 0.02 * (T - 1)) for T in range(1, 10)},
              {T: 0.010 * (1 + 0.6 * (T > 1) + 0.05 * T) for T in range(1, 10)},  # the first extra token dear
              {T: 0.010 * T for T in range(1, 10)}]
    for curve in curves:
        for fixed in (0.0, 0.0008):
            gate = LookupGate(8, curve, fixed_s=fixed)
            replay, oracle = gate.replay(texts, 0.0003), gate.oracle(texts, 0.0003)
            assert len(oracle) == 3 and all(r <= o + 1e-12 for r, o in zip(replay, oracle))
    assert np.allclose(LookupGate(8, curves[2]).oracle(texts, stock_token_s=0.0003), 1.03)
    # 20 distinct prompt tokens answered by themselves twice: every draft right, so 39 tokens in ceil(39 / 9) steps
    prompt = np.arange(100, 120)
    text = np.concatenate([prompt, prompt, prompt]).astype(np.int32)
    free = {T: 0.010 for T in range(1, 10)}
    assert LookupGate(8, free).oracle([(text, 20)]) == [pytest.approx(39 / 5)]
    with pytest.raises(ValueError, match="cost curve"):
        LookupGate(8).oracle(texts)


def test_bench_prints_the_lookups_replay_and_oracle(model_path, monkeypatch):
    """Where `auto` runs the lookup alone, the bench predicts each prompt's speedup by the replay and bounds it by
    the oracle, both over stock's own answer to that prompt."""
    from llama_medusa.commands import bench

    curve = {T: 0.010 * (1 + 0.3 * (T > 1) + 0.01 * T) for T in autotree.COST_SIZES}
    monkeypatch.setattr(autotree, "cost_curve", lambda llm, sizes=(), **kw: dict(curve))
    monkeypatch.setattr(autotree, "heads_time", lambda *a, **k: autotree.HeadsCost(fixed=1.0))
    s = bench.run_bench(model_path, prompts=["Repeat after me: one two three, one two three, one two three."],
                        max_tokens=24, runs=1, n_ctx=512, peer=False, log=lambda *a: None)
    assert s["lookup_alone"] and s["all_identical"]
    row = s["prompts"][0]
    assert 0 < row["lookup_replay"] <= row["lookup_oracle"]
    assert s["lookup_oracle_median"] == row["lookup_oracle"] and s["lookup_replay_median"] == row["lookup_replay"]
    text = bench.format_table(s)
    assert "oracle" in text and f"{row['lookup_oracle']:.2f}x" in text


def test_auto_decodes_plainly_when_the_lookup_replays_below_the_margin(model_path, stock, monkeypatch):
    """With no heads tree, `auto` keeps the lookup only where its replay over the heads' reference texts promises
    REPLAY_MIN_GAIN; below it generation is stock's own loop (and its output)."""
    import llama_cpp

    from llama_medusa import Llama
    from llama_medusa.drafting import autotree, lookup
    from llama_medusa.heads.shipped import SMOLLM2_HEADS

    heads = SMOLLM2_HEADS
    curves = {"flat": {T: 0.010 * (1 + 0.3 * (T > 1) + 0.01 * T) for T in autotree.COST_SIZES},
              "linear": {T: 0.010 * T for T in autotree.COST_SIZES}}
    for name, curve in curves.items():
        monkeypatch.setattr(autotree, "cost_curve", lambda llm, sizes=(), curve=curve, **kw: dict(curve))
        # heads this slow win no tree on any curve: the lookup alone is what `auto` weighs
        monkeypatch.setattr(autotree, "heads_time", lambda *a, **k: autotree.HeadsCost(fixed=1.0))
        llm = Llama(model_path, medusa_heads=heads, n_ctx=512, verbose=False)
        a = llm.medusa_auto
        assert a["choices"] == [] and a["lookup_replay_texts"] == 30  # the shipped file's validation answers
        # the bench's per-prompt prediction is the same replay, kept or not: over the same texts, the same figure
        from llama_medusa.heads import MedusaHeads

        ref = MedusaHeads.load(heads).reference_texts()
        assert np.median(llm.replay_lookup(ref)) == a["lookup_predicted_speedup"]
        if name == "flat":
            assert a["lookup"] and a["lookup_predicted_speedup"] >= lookup.REPLAY_MIN_GAIN
            assert llm._medusa.lookup is not None and a["predicted_speedup"] == a["lookup_predicted_speedup"]
        else:
            # every step plain: the decoder's step overhead against stock's per-token time, nothing gained
            plain = (0.010 + autotree.STOCK_TOKEN_OVERHEAD_S) / (0.010 + autotree.STEP_OVERHEAD_S)
            assert not a["lookup"] and abs(a["lookup_predicted_speedup"] - plain) < 1e-9 and a["predicted_speedup"] < 1.05
            assert llm._medusa.lookup is None
            calls = []
            real = llama_cpp.Llama.generate
            def counted(self, *a, calls=calls, real=real, **k):
                calls.append(1)
                return real(self, *a, **k)

            monkeypatch.setattr(llama_cpp.Llama, "generate", counted)
            text = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
            assert calls and text == stock.create_completion("The capital of France is", max_tokens=8,
                                                             temperature=0.0)["choices"][0]["text"]
        llm.close()


class _ThreadedBackbone:
    """A backbone whose cost curve depends on its thread setting: t(1) on the one-token threads, a batch on the
    batch threads, as in llama.cpp. t1[n]: seconds of a token on n threads; batch[nb] = (t(2), per extra token)."""

    n_embd = 8

    def __init__(self, t1, batch):
        self.t1, self.batch, self.threads = t1, batch, None

    def prepare(self, n_seq, capacity):
        pass

    def thread_settings(self):
        return [(n, nb) for n in self.t1 for nb in self.batch]

    def set_threads(self, n, nb):
        self.threads = (n, nb)

    def curve(self, sizes):
        n, nb = self.threads
        t2, extra = self.batch[nb]
        return {T: self.t1[n] if T == 1 else t2 + extra * (T - 2) for T in sizes}


def _auto_threads(monkeypatch, backbone, fixed=(None, None)):
    from llama_medusa.decoder import plan

    class Drafter:
        n_heads = 3

    class FakeLlama:
        pass

    llm = FakeLlama()
    monkeypatch.setattr(autotree, "cost_curve", lambda llm_, sizes=(), **kw: backbone.curve(sizes))
    monkeypatch.setattr(autotree, "heads_time", lambda *a, **k: autotree.HeadsCost(fixed=1e-4))
    a = plan._auto(llm, backbone, Drafter(), 10, 63, fixed, lambda **priced: None)
    assert llm.medusa_auto is a and backbone.threads == a["threads"]
    return a


def test_auto_picks_the_fastest_thread_setting(monkeypatch):
    # only two batch threads make a batch cheap: speculate with them (a speculative step is all batch, so the
    # one-token count does not change its rate)
    bb = _ThreadedBackbone(t1={1: 0.010, 2: 0.007}, batch={1: (0.019, 0.009), 2: (0.0075, 0.0005)})
    a = _auto_threads(monkeypatch, bb)
    assert a["threads"][1] == 2 and a["choices"] and a["predicted_vs_best_plain"] >= autotree.MIN_GAIN
    best = max(o["tokens_per_s"] for o in a["threads_options"] if o["wins"])
    assert best == pytest.approx(max(o["tokens_per_s"] for o in a["threads_options"]))


def test_auto_never_picks_a_setting_slower_than_plain_at_the_best_count(monkeypatch):
    # batches are cheap only on one thread, whose tokens are twice as dear: a tree there beats plain decoding on
    # one thread but not plain decoding on two, which is what runs
    bb = _ThreadedBackbone(t1={1: 0.010, 2: 0.005}, batch={1: (0.0105, 0.0005), 2: (0.010, 0.005)})
    a = _auto_threads(monkeypatch, bb)
    one = next(o for o in a["threads_options"] if o["threads"] == (1, 1))
    assert one["speculates"] and not one["wins"] and one["vs_best_plain"] < 1.0
    assert a["choices"] == [] and a["threads"][0] == 2 and a["predicted_vs_best_plain"] == pytest.approx(1.0)
    # and where no batch pays on any setting, plain decoding at the fastest count
    flat = _ThreadedBackbone(t1={1: 0.010, 2: 0.008}, batch={1: (0.020, 0.010), 2: (0.016, 0.008)})
    a = _auto_threads(monkeypatch, flat)
    assert a["choices"] == [] and a["threads"][0] == 2


def test_auto_keeps_threads_the_user_set_and_says_what_it_would_choose(monkeypatch):
    bb = _ThreadedBackbone(t1={1: 0.010, 2: 0.007}, batch={1: (0.019, 0.009), 2: (0.0075, 0.0005)})
    a = _auto_threads(monkeypatch, bb, fixed=(1, 1))
    assert a["threads"] == (1, 1) and a["threads_would_choose"][1] == 2
    assert a["choices"] == []  # on (1, 1) no tree pays: plain decoding, at the user's count


def test_auto_measures_again_a_stale_curve_of_a_setting_it_does_not_choose(tmp_path, monkeypatch):
    """A cached curve for one thread setting, measured while the machine was busy elsewhere, is checked against a
    quick t(1) and t(2) like the chosen setting's, so the search compares fresh figures for every setting."""
    from llama_medusa.decoder import plan

    monkeypatch.setenv("LLAMA_MEDUSA_CACHE", str(tmp_path))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 10)
    bb = _ThreadedBackbone(t1={1: 0.010, 2: 0.007}, batch={1: (0.019, 0.009), 2: (0.0075, 0.0005)})

    class Llm:  # what cost_curve reads of a Llama; the thread counts follow the backbone's setting
        model_path = str(model)

        class model_params:
            n_gpu_layers = 0

        backbone = bb
        n_threads = property(lambda self: bb.threads[0])
        n_threads_batch = property(lambda self: bb.threads[1])

    bb.measure_verify = lambda sizes, repeats: bb.curve(sizes)
    bb.set_threads(1, 1)
    stale = dict(bb.t1), dict(bb.batch)
    bb.t1[1], bb.batch[1] = 0.001, (0.0011, 0.0001)  # (1, 1) cached at a tenth of its true cost
    for sizes in ([T for T in plan.SEARCH_SIZES if T <= 63], [T for T in autotree.COST_SIZES if T <= 63]):
        autotree.cost_curve(Llm(), sizes=sizes)
    bb.t1, bb.batch = stale

    class Drafter:
        n_heads = 3

    monkeypatch.setattr(autotree, "heads_time", lambda *a, **k: autotree.HeadsCost(fixed=1e-4))
    llm = Llm()
    a = plan._auto(llm, bb, Drafter(), 10, 63, (None, None), lambda **priced: None)
    one = next(o for o in a["threads_options"] if o["threads"] == (1, 1))
    assert one["plain_tokens_per_s"] == pytest.approx(1 / 0.010)  # its fresh t(1), not the cached 1 ms
    assert a["threads"][1] == 2
