"""EAGLE heads: the checkpoint layout, the drafter against the numpy reference, its cache, the per-step tree, the
JAX trainer's training-time test, calibration, and greedy identity with stock."""
import json

import numpy as np
import pytest
from conftest import N_CTX, PROMPTS, THREADS, stock_tokens, watch_grow

from llama_medusa.backbones.gguf_tensors import TokenEmbedding
from llama_medusa.drafting.eagle import EagleDrafter
from llama_medusa.heads.eagle import EagleHeads, config_of

CFG = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
       "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bias": True,
       "max_position_embeddings": 2048, "vocab_size": 300}
# int8 weights and activations in the drafter against float32 in the reference: features agree to about 1% of
# their scale (measured 0.3-0.6% on these shapes); 3% leaves room and still catches any wrong mask or position
TOL = 0.03


def checkpoint(seed=0, cfg=CFG, drop=None, reshape=None):
    """Random weights in EAGLE-1/2's checkpoint layout (key names, shapes, the embedding copy)."""
    rng = np.random.default_rng(seed)
    H, I, nh, nkv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // nh
    w = {
        "embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], H)),
        "fc.weight": rng.standard_normal((H, 2 * H)) / np.sqrt(2 * H), "fc.bias": rng.standard_normal(H) * 0.1,
        "layers.0.self_attn.q_proj.weight": rng.standard_normal((nh * d, H)) / np.sqrt(H),
        "layers.0.self_attn.k_proj.weight": rng.standard_normal((nkv * d, H)) / np.sqrt(H),
        "layers.0.self_attn.v_proj.weight": rng.standard_normal((nkv * d, H)) / np.sqrt(H),
        "layers.0.self_attn.o_proj.weight": rng.standard_normal((H, nh * d)) / np.sqrt(H),
        "layers.0.post_attention_layernorm.weight": 1 + 0.1 * rng.standard_normal(H),
        "layers.0.mlp.gate_proj.weight": rng.standard_normal((I, H)) / np.sqrt(H),
        "layers.0.mlp.up_proj.weight": rng.standard_normal((I, H)) / np.sqrt(H),
        "layers.0.mlp.down_proj.weight": rng.standard_normal((H, I)) / np.sqrt(I),
    }
    if drop:
        del w[drop]
    if reshape:
        w[reshape] = w[reshape][..., :-1]
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_checkpoint(tmp_path, **kw):
    from safetensors.numpy import save_file

    cfg = kw.pop("cfg", CFG)
    save_file(checkpoint(cfg=cfg, **kw), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def drafter_of(heads, seed=1, vocab=300):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((vocab, heads.hidden_size)).astype(np.float32)
    lm = rng.standard_normal((vocab, heads.hidden_size)).astype(np.float32)
    return EagleDrafter(heads, TokenEmbedding.from_array(emb), lm), emb, lm


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_checkpoint_loads_and_drafter_equals_numpy_reference(tmp_path):
    heads = EagleHeads.load(write_checkpoint(tmp_path))
    assert heads.format == "eagle-checkpoint" and "embed_tokens.weight" not in heads.weights
    d, emb, _ = drafter_of(heads)
    rng = np.random.default_rng(2)
    n = 40
    toks = rng.integers(0, 300, n + 1)
    states = rng.standard_normal((n, 64)).astype(np.float32)
    ref = heads.forward(emb[toks[1:]], states, np.arange(n))
    # the cache grown in uneven chunks (steps accepting 1..5 tokens) gives the reference's last feature each time
    at = 0
    for m in (1, 3, 5, 2, 4, 1, 5, 5, 3, 4, 2, 5):
        g = d.observe(states[at : at + m], toks[: at + m + 1])
        at += m
        assert rel(g, ref[at - 1]) < TOL
    assert at == n


def test_cache_after_accepts_and_rejections_equals_recomputed(tmp_path):
    heads = EagleHeads.load(write_checkpoint(tmp_path))
    d, _, _ = drafter_of(heads)
    rng = np.random.default_rng(3)
    toks = rng.integers(0, 300, 60)
    states = rng.standard_normal((59, 64)).astype(np.float32)
    at = 0
    for m in (2, 1, 4, 3, 1, 5):  # each step: the accepted states extend the cache, then a tree is grown and dropped
        tree, tokens, _ = d.grow(states[at : at + m], toks[: at + m + 1], 17, 10)
        at += m
        assert len(tree) == len(tokens) and tokens[0] == toks[at]
    k, v = d.cache()
    fresh, _, _ = drafter_of(heads)
    fresh.observe(states[:at], toks[: at + 1])
    fk, fv = fresh.cache()
    assert k.shape == fk.shape == (at, 2, 16)
    np.testing.assert_allclose(k, fk, rtol=0, atol=1e-5)
    np.testing.assert_allclose(v, fv, rtol=0, atol=1e-5)
    # a jump in positions (the caller sent tokens of its own) starts the cache again instead of mixing texts
    d.observe(states[:3], toks[:4])
    assert (d.start, d.end) == (0, 3)


def test_tree_levels_equal_the_reference_along_each_path(tmp_path):
    """Every node of a tree sees exactly its own path: its output feature equals the reference forward over the
    true pairs followed by that path, fed back with the draft's own features. A grown tree and the same tree
    filled as a fixed one (medusa_choices) hold the same tokens."""
    heads = EagleHeads.load(write_checkpoint(tmp_path))
    rng = np.random.default_rng(4)
    toks = rng.integers(0, 300, 21)
    states = rng.standard_normal((20, 64)).astype(np.float32)
    d, emb, _ = drafter_of(heads)
    d.observe(states[:19], toks[:20])
    tree, tokens, _ = d.grow(states[19:20], toks[:21], 17, 10)
    assert tree.depth >= 3 and len(tree) == 17
    d2, _, _ = drafter_of(heads)
    d2.observe(states[:19], toks[:20])
    assert d2.fill(states[19:20], toks[:21], tree, 10) == tokens
    checked = 0
    for i, g in d2.features.items():
        path, j = [], i
        while j > 0:
            path.append(j)
            j = tree.nodes[j].parent
        feats, pair_toks = list(states), list(toks[1:21])
        ref = heads.forward(emb[np.array(pair_toks)], np.stack(feats), np.arange(20))[-1]
        for depth, node in enumerate(path[::-1], start=1):
            feats.append(ref)
            pair_toks.append(tokens[node])
            ref = heads.forward(emb[np.array(pair_toks)], np.stack(feats), np.arange(20 + depth))[-1]
        # int8 rounding compounds along the path (3.2% measured at depth 3); a wrong mask or position is off by
        # tens of percent
        assert rel(g, ref) < TOL * max(1, len(path)), (i, path)
        checked += 1
    assert checked >= 4


def test_malformed_checkpoints_are_refused(tmp_path):
    for kw, words in [(dict(drop="layers.0.mlp.up_proj.weight"), "up_proj.weight is missing"),
                      (dict(reshape="layers.0.self_attn.k_proj.weight"), "k_proj.weight has shape"),
                      (dict(cfg=dict(CFG, num_hidden_layers=2)), "one decoder layer")]:
        d = tmp_path / words.split()[0].replace(".", "_")
        d.mkdir()
        with pytest.raises(ValueError, match=words):
            EagleHeads.load(write_checkpoint(d, **kw))
    bad = tmp_path / "nokeys"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="lacks intermediate_size"):
        config_of(json.loads((bad / "config.json").read_text()), str(bad))
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "config.json").write_text(json.dumps(CFG))
    (pick / "pytorch_model.bin").write_bytes(b"\x80\x02junk")
    with pytest.raises(ValueError, match="never unpickles"):
        EagleHeads.load(pick)
    trunc = tmp_path / "trunc"
    write_checkpoint(trunc.mkdir() or trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        EagleHeads.load(trunc)


def test_own_format_roundtrip(tmp_path):
    heads = EagleHeads.load(write_checkpoint(tmp_path))
    heads.draft_vocab = np.arange(0, 300, 3, dtype=np.int32)
    heads.temperature = np.array([1.5, 2.0, 2.5])
    heads.save(str(tmp_path / "e.safetensors"), extra_meta={"n_vocab": 300}, half=False)
    back = EagleHeads.load(tmp_path / "e.safetensors")
    assert back.config == heads.config and back.format == "eagle"
    np.testing.assert_array_equal(back.draft_vocab, heads.draft_vocab)
    assert list(back.temperature[:3]) == [1.5, 2.0, 2.5] and len(back.temperature) == back.n_heads
    for k, w in heads.weights.items():
        np.testing.assert_array_equal(back.weights[k], w)
    with pytest.raises(ValueError, match="hidden size 64, but the model's is 576"):
        back.check_model(576, 300)
    with pytest.raises(ValueError, match="300-token vocabulary"):
        back.check_model(64, 49152)


def test_training_time_test_equals_reference_chain(tmp_path):
    """The JAX trainer's step j at position t is the draft fed its own features along the true tokens: the same
    numbers as the numpy reference run on that chain."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from llama_medusa.commands.train_eagle import make_model

    jax.config.update("jax_enable_x64", False)
    heads = EagleHeads.load(write_checkpoint(tmp_path))
    rng = np.random.default_rng(5)
    L = 12
    toks = rng.integers(0, 300, L + 1)
    states = rng.standard_normal((L + 1, 64)).astype(np.float32)
    emb = rng.standard_normal((300, 64)).astype(np.float32)
    P = jnp.asarray(rng.standard_normal((50, 64)), jnp.float32)
    forward, loss = make_model(heads.config, P, 3)
    params = {k: jnp.asarray(v) for k, v in heads.weights.items()}
    outs = forward(params, jnp.asarray(emb[toks[1:]])[None], jnp.asarray(states)[None])
    for t in (0, 4, 8):
        feats = list(states[: t + 1])
        pt = list(toks[1 : t + 2])
        g = heads.forward(emb[np.array(pt)], np.stack(feats), np.arange(t + 1))[-1]
        np.testing.assert_allclose(np.asarray(outs[0][0, t]), g, rtol=1e-4, atol=1e-4)
        for j in (1, 2):
            feats.append(g)
            pt.append(toks[t + j + 1])
            g = heads.forward(emb[np.array(pt)], np.stack(feats), np.arange(t + j + 1))[-1]
            np.testing.assert_allclose(np.asarray(outs[j][0, t]), g, rtol=1e-4, atol=1e-4)
    total, parts = loss(params, jnp.asarray(emb[toks[1:]])[None], jnp.asarray(states)[None],
                        jnp.ones((1, L + 1), bool))
    assert np.isfinite(float(total)) and len(parts) == 3


def test_calibration_lowers_ece_on_overconfident_logits():
    from llama_medusa.commands.train_eagle import calibrate, ece

    rng = np.random.default_rng(6)
    n, V = 4000, 20
    true = rng.standard_normal((n, V)) * 1.5
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    target = np.array([rng.choice(V, p=row) for row in p])
    z = true * 3.0  # three times too sharp
    temps, stats = calibrate([z], [target])
    assert 2.4 < temps[0] < 3.6
    # fitted on half the rows, measured on the other half (2,000 rows: about 0.02 of binning noise)
    assert stats[0]["ece_after"] < 0.05 and stats[0]["ece_before"] > 0.3
    assert ece(true, target, 1.0) < 0.04


@pytest.fixture(scope="module")
def eagle_path(tmp_path_factory):
    """Random EAGLE weights of SmolLM2's shape (the decoder's identity with stock holds for any drafts)."""
    cfg = dict(CFG, hidden_size=576, intermediate_size=256, num_attention_heads=9, num_key_value_heads=3)
    d = tmp_path_factory.mktemp("eagle")
    heads = EagleHeads(checkpoint(cfg=dict(cfg, vocab_size=10)), config_of(cfg, "test"))
    # a draft that copies the feature through, over every 7th token: some drafts hit, most miss
    heads.weights["fc.weight"][:, 576:] += np.eye(576, dtype=np.float32) * 4
    heads.draft_vocab = np.arange(0, 49152, 7, dtype=np.int32)
    heads.save(str(d / "e.safetensors"), extra_meta={"n_vocab": 49152})
    return str(d / "e.safetensors")


def test_shipped_eagle_heads_are_the_default_and_exact(model_path, reference):
    """The product's default path: medusa_heads="auto" takes the EAGLE heads that ship for SmolLM2, with
    medusa_choices="auto" (the tree priced on this machine's cost curve); greedy identical to stock."""
    from llama_medusa import Llama
    from llama_medusa.heads.shipped import SMOLLM2_EAGLE

    m = Llama(model_path, n_ctx=N_CTX, verbose=False, medusa_heads="auto", medusa_lookup=0, **THREADS)
    assert isinstance(m._medusa.drafter, EagleDrafter) and m._medusa.drafter.heads.source == SMOLLM2_EAGLE
    assert m._medusa.drafter.heads.meta["train_prompts"] > 3000
    for user in PROMPTS[:2]:
        pt, want = reference(user, 80)
        assert stock_tokens(m, pt, len(want), temp=0.0) == want


@pytest.mark.parametrize("choices", ["per-step", "chain-2"])
def test_greedy_identical_to_stock_and_batches_within_limit(model_path, reference, eagle_path, choices):
    from llama_medusa import Llama

    max_batch = 9
    m = Llama(model_path, n_ctx=N_CTX, verbose=False, medusa_heads=eagle_path, medusa_choices=choices,
              medusa_max_batch=max_batch, medusa_lookup=0, **THREADS)
    drafter = m._medusa.drafter
    seen = watch_grow(drafter)
    for user in PROMPTS[:2]:
        pt, want = reference(user, 60)
        assert stock_tokens(m, pt, len(want), temp=0.0) == want
    if choices == "per-step":
        assert seen and all(n <= room <= max_batch for n, room in seen)
        assert max(n for n, _ in seen) > 2  # trees were grown, not just the root
    assert m.medusa_stats.steps > 0


def test_jax_training_learns_the_answers(model_path):
    """A few epochs of the EAGLE trainer on six real answers: depth-1 accuracy on them rises well above the
    untrained layer's, and the heads it returns load into the drafter."""
    pytest.importorskip("jax")
    from llama_medusa.backbones.gguf_tensors import read_output_matrix
    from llama_medusa.commands.prompts import generic_prompts
    from llama_medusa.commands.train import collect
    from llama_medusa.commands.train_eagle import evaluate, fit, topk_accuracy

    data = collect(model_path, generic_prompts()[:6], max_tokens=64, log=lambda m: None)
    proj = read_output_matrix(model_path)
    emb = TokenEmbedding.from_gguf(model_path)
    untrained, E = fit(data, model_path, proj, emb, epochs=0, log=lambda m: None)
    trained, _ = fit(data, model_path, proj, emb, epochs=25, lr=3e-3, log=lambda m: None)
    acc_u = topk_accuracy(*evaluate(untrained, data, proj, E, max_len=64))
    acc_t = topk_accuracy(*evaluate(trained, data, proj, E, max_len=64))
    assert acc_t[0][0] > acc_u[0][0] + 0.2 and acc_t[0][4] > 0.5, (acc_t[0][:5], acc_u[0][:5])
    from llama_medusa.drafting.tree import Tree

    d = EagleDrafter(trained, emb, proj)
    toks, states, n_prompt = data[0]
    tree = Tree("chain-2")
    filled = d.fill(states[n_prompt : n_prompt + 5], toks[: n_prompt + 6], tree, 5)
    assert len(filled) == len(tree) and filled[0] == toks[n_prompt + 5]
