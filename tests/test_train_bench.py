"""Training, the bench command and the CLI's bad-input messages, on the real model."""
import json
import os
import subprocess
import sys

import llama_cpp  # before numpy (see conftest)
import numpy as np
import pytest

from llama_medusa import MedusaHeads
from llama_medusa.backbones.gguf_tensors import TokenEmbedding, read_output_matrix
from llama_medusa.commands.train import accuracy, collect, fit_heads, generic_prompts


@pytest.fixture(scope="module")
def small_data(model_path):
    return collect(model_path, generic_prompts()[:6], max_tokens=64, log=lambda m: None)


@pytest.mark.parametrize("conditioned", [False, True])
def test_tiny_training_beats_untrained_heads(model_path, small_data, conditioned):
    proj = read_output_matrix(model_path)
    emb = TokenEmbedding.from_gguf(model_path) if conditioned else None
    n_states = sum(len(t) - n for t, _, n in small_data)
    assert 200 <= n_states <= 1000  # "a few hundred hidden states"
    trained = fit_heads(small_data, proj, n_heads=2, epochs=6, inner=256, embedding=emb, log=lambda m: None)
    assert trained.conditioned == conditioned
    untrained = MedusaHeads([[(b[0][0], b[0][1], np.zeros_like(b[0][2]))] for b in trained.blocks], [None, None],
                            trained.hidden_size, draft_vocab=trained.draft_vocab, cond=trained.cond)
    acc_t = accuracy(trained, model_path, small_data, proj=proj, embedding=emb)
    acc_u = accuracy(untrained, model_path, small_data, proj=proj, embedding=emb)
    for k in range(2):
        assert acc_t[k][4] > acc_u[k][4] + 0.1, (acc_t, acc_u)  # top-5, same data


def test_batched_collection_is_stock_greedy(model_path, small_data):
    """Answers collected 16 prompts at a time are the ones stock llama-cpp-python gives each prompt alone."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path, n_ctx=512, flash_attn=True, verbose=False)
    for toks, states, n_prompt in small_data[:3]:
        answer = []
        for tok in llm.generate(toks[:n_prompt].tolist(), temp=0.0):
            answer.append(tok)
            if len(answer) >= 64 or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
        assert toks[n_prompt:].tolist() == answer
        assert states.shape == (len(toks), 576) and np.isfinite(states).all()


def test_trained_heads_roundtrip_with_draft_vocab(model_path, small_data, tmp_path):
    proj = read_output_matrix(model_path)
    heads = fit_heads(small_data, proj, n_heads=2, epochs=1, inner=64, log=lambda m: None)
    path = str(tmp_path / "h.safetensors")
    heads.save(path, extra_meta={"n_vocab": 49152})
    back = MedusaHeads.load(path)
    np.testing.assert_array_equal(back.draft_vocab, heads.draft_vocab)
    eng = back.engine(model_path, 576, 49152, "i8", backbone_proj=proj)
    ids, _ = eng.topk(small_data[0][1][:3], 5)
    assert set(back.token_ids(ids).ravel()) <= set(heads.draft_vocab.tolist())


def test_training_answers_feed_the_lookup(small_data):
    """train stores the training split's greedy answers with the heads; the index built from them continues a
    phrase of one of them (when it recurs) with that answer's next token."""
    from llama_medusa.commands.train import train_answers
    from llama_medusa.drafting.answers import SEPARATOR, AnswerIndex

    stored = train_answers(small_data)
    parts = np.split(stored, np.flatnonzero(stored == SEPARATOR))
    answers = [p[p != SEPARATOR] for p in parts if len(p[p != SEPARATOR])]
    assert [a.tolist() for a in answers] == [t[n:].tolist() for t, _, n in small_data if len(t) > n]
    index = AnswerIndex(stored, 49152)
    hits = 0
    for a in answers:
        for i in range(6, len(a)):
            got = index.next_token(a[:i].tolist())
            if got is not None and got[1] == 1.0 and got[2] == 6:
                assert got[0] == a[i]  # a 6-gram always followed by one token: this answer's
                hits += 1
    assert hits > 0


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llama_medusa.commands.cli", *args], capture_output=True, text=True)


def random_heads_file(tmp_path, hidden=576):
    rng = np.random.default_rng(0)
    h = MedusaHeads([[(rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.02, None, None)]] * 2,
                    [None, None], hidden)
    path = str(tmp_path / f"heads{hidden}.safetensors")
    h.save(path)
    return path


def test_bench_json_fields(model_path, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi.\n\nName a color.\n")
    out = tmp_path / "b.json"
    r = run_cli("bench", "--model", model_path, "--heads", random_heads_file(tmp_path), "--prompts", str(prompts),
                "--max-tokens", "12", "--runs", "1", "--choices", "chain-2", "--json", str(out), "--plot",
                str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    for key in ("machine", "model", "heads", "tree", "verify_cost_ms", "verify_cost_ratio", "speedup_median",
                "mean_accepted", "head_acceptance", "accepted_lengths", "all_identical", "prompts",
                "lookup_speedup_median",
                "time_split_ms", "overhead_fraction", "tokens_per_pass", "lookup", "divergences", "lookup_nodes",
                "lookup_accepted", "answers_nodes", "answers_accepted"):
        assert key in s, key
    assert s["divergences"] == [] and s["lookup"] == 8
    # a fixed tree runs: the lookup alone is not what runs, so no replay of it is printed as a prediction
    assert "lookup_replay_median" not in s and not any("lookup_replay" in r for r in s["prompts"])
    assert s["all_identical"] and len(s["prompts"]) == 2
    assert {"read_GBps", "f32_GFLOPs", "cpu"} <= set(s["machine"])
    assert "speedup" in r.stdout and "identical" in r.stdout
    # passes by tokens they gave: every pass of the last run, once
    hist = s["accepted_lengths"]
    assert sum(hist) == sum(p["steps"] for p in s["prompts"]) > 0
    assert sum((j + 1) * n for j, n in enumerate(hist)) == sum(p["medusa_tokens"] for p in s["prompts"])
    assert "passes by tokens they gave (last run): 1: " in r.stdout
    # --plot: a PNG whose middle panel is that histogram
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from llama_medusa.commands.bench import plot
    fig = plot(s, str(tmp_path / "again.png"))
    tok_s, passes, curve = fig.axes
    assert [b.get_height() for b in passes.patches] == hist
    assert [b.get_height() for b in tok_s.patches] == [p[k] for k in ("stock_tok_s", "medusa_tok_s")
                                                       for p in s["prompts"]]
    assert list(curve.lines[0].get_ydata()) == list(s["verify_cost_ratio"].values())


def test_divergence_reports_the_first_difference_and_stock_margin(stock):
    """The bench's near-tie evidence: where two runs first differ, and stock's top-2 logit gap there."""
    from llama_medusa.commands.bench import divergence

    ids = stock.tokenize(b"The capital of France is Paris. The capital of Italy is")
    assert divergence(stock, ids, list(ids)) is None
    other = list(ids)
    other[7] = ids[7] + 1
    d = divergence(stock, ids, other)
    assert d["position"] == 7 and d["stock_token"] == ids[7] and d["other_token"] == ids[7] + 1
    stock.reset()
    stock.eval(ids[:7])  # stock's logits after the common prefix
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(stock._ctx.ctx, -1), shape=(stock.n_vocab(),))
    top = np.sort(row.astype(np.float64))[-2:]
    assert d["top2_gap"] == pytest.approx(top[1] - top[0]) and d["top2_gap"] > 0


def test_cli_bad_inputs(model_path, tmp_path):
    binary = tmp_path / "p.bin"
    binary.write_bytes(b"\x00\x01\x02\xff\xfe")
    r = run_cli("bench", "--model", model_path, "--heads", random_heads_file(tmp_path), "--prompts", str(binary))
    assert r.returncode == 2 and "not" in r.stderr and "text" in r.stderr
    r = run_cli("bench", "--model", model_path, "--heads", random_heads_file(tmp_path, hidden=64), "--max-tokens", "4")
    assert r.returncode == 2 and "hidden size 64" in r.stderr and "576" in r.stderr
    r = run_cli("bench", "--model", model_path, "--heads", str(tmp_path / "missing.safetensors"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("bench", "--model", str(tmp_path / "missing.gguf"))  # not "no heads ship for missing.gguf"
    assert r.returncode == 2 and "Model path does not exist" in r.stderr
    for flag in ("--runs", "--max-tokens"):
        r = run_cli("bench", "--model", model_path, flag, "0")
        assert r.returncode == 2 and "must be at least 1" in r.stderr
    # train refuses before hours of work: its own prompt file, the output's directory, the held-out split
    out = str(tmp_path / "h.safetensors")
    r = run_cli("train", "--model", model_path, "--out", out, "--prompts", str(binary))
    assert r.returncode == 2 and "not" in r.stderr and "text" in r.stderr
    r = run_cli("train", "--model", model_path, "--out", str(tmp_path / "no" / "dir" / "h.safetensors"))
    assert r.returncode == 2 and "not a writable directory" in r.stderr
    few = tmp_path / "few.txt"
    few.write_text("What is rain?\nWhy is the sky blue?\n")
    r = run_cli("train", "--model", model_path, "--out", out, "--prompts", str(few))
    assert r.returncode == 2 and "need more than 32 prompts" in r.stderr and "got 2" in r.stderr
    r = run_cli("train", "--model", model_path, "--out", out, "--prompts", str(few), "--init", out)
    assert r.returncode == 2 and "--init and --lr apply to --type eagle" in r.stderr
    r = run_cli("train", "--model", model_path, "--out", out, "--prompts", str(few), "--type", "eagle", "--init",
                random_heads_file(tmp_path))
    assert r.returncode == 2 and "--init needs an EAGLE heads file" in r.stderr


def test_sweep_entries_carry_identity_and_divergences(model_path, stock):
    from llama_medusa.commands.bench import run_sweep
    from llama_medusa.heads.shipped import shipped_heads_for

    common = dict(n_ctx=512, flash_attn=True, verbose=False)
    out = run_sweep(model_path, shipped_heads_for(model_path), ["Name a color."], 12, [("chain-1", 0), ([], 8)], common,
                    stock, 3, log=lambda m: None)
    assert [w["tree"] for w in out] == ["chain-1", "0 nodes +lookup 8"]
    for w in out:
        assert w["identical"] and w["divergences"] == [] and w["speedup"] > 0 and w["mean_accepted"] >= 1


def test_cli_trains_on_the_users_prompt_file(model_path, tmp_path):
    """`llama-medusa train --prompts FILE`: the user's prompts are what is answered and fitted (the held-out split
    taken from them), and the file loads as heads for the model."""
    from llama_medusa.commands.prompts import TRAIN_PROMPTS

    prompts = tmp_path / "mine.json"
    prompts.write_text(json.dumps(TRAIN_PROMPTS[:24]))
    out = tmp_path / "mine.safetensors"
    r = run_cli("train", "--model", model_path, "--out", str(out), "--prompts", str(prompts), "--held-out", "4",
                "--max-tokens", "8", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    heads = MedusaHeads.load(str(out))
    assert heads.meta["train_prompts"] == 20 and heads.meta["trained_on"] == os.path.basename(model_path)
    heads.check_model(576, 49152)  # raises on a mismatch


def test_bench_variants_table(model_path, tmp_path):
    """--variants: several drafters and trees beside stock in one run, each with its identity count."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("Name three colors.\n")
    out = tmp_path / "v.json"
    r = run_cli("bench", "--model", model_path, "--prompts", str(prompts), "--max-tokens", "16", "--runs", "1",
                "--variants", "shipped:chain-2,shipped:per-step", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [row["variant"] for row in res["rows"]] == ["shipped:chain-2", "shipped:per-step"]
    assert all(row["identical"] == "1/1" for row in res["rows"])
    assert res["rows"][1]["per_step_tree"] and not res["rows"][0]["per_step_tree"]
    assert all(row["tokens_per_pass"] >= 1.0 and row["draft_ms_per_step"] > 0 for row in res["rows"])
    assert "| shipped:per-step |" in r.stdout and res["threads"][0] >= 1
