"""`llama-medusa train --type eagle`: an EAGLE draft layer by self-distillation, in JAX (the `train` extra).

Data: the same cached greedy answers and final-norm states as the Medusa trainer (train.collect). Each answer is
one sequence of pairs (f_t, x_{t+1}) from its first token on: the window the drafter's cache covers at inference
(drafting/eagle.py). Loss, per position t and depth j (EAGLE-3's training-time test): the draft is fed its own
predicted feature at depths j >= 1, attending to the true pairs up to t and its own chain, and learns
  soft cross-entropy against the backbone's distribution at f_{t+j+1} over the draft vocabulary
  + FEATURE_WEIGHT * smooth-L1 to f_{t+j+1} (EAGLE-1's regression),
weighted 0.8^j. AdamW with warmup and cosine decay, gradients clipped by global norm.
Then a softmax temperature per depth is fitted on the held-out prompts (the per-step tree multiplies these
probabilities), and the expected calibration error of the depth-1 confidence is measured before and after.
JAX runs jit-compiled on the CPU here; inference never imports it (numpy + the native engine).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..drafting.calibration import calibrate, ece  # noqa: F401 (the trainer's API)

FEATURE_WEIGHT = 0.1
STEP_DECAY = 0.8
TTT_STEPS = 4  # depths trained with the draft's own features (the tree drafts up to EagleHeads.n_heads)


def _need_jax():
    try:
        import jax
        import optax
    except ImportError:
        raise SystemExit("training EAGLE heads needs JAX and optax: pip install 'llama-medusa[train]'") from None
    return jax, optax


def sequences(data, max_len: int):
    """(tokens, states) of each answer from its first token on, cut to max_len + 1 tokens."""
    out = []
    for toks, states, n_prompt in data:
        n = min(len(toks), len(states))
        if n - n_prompt >= 3:
            out.append((np.asarray(toks[n_prompt:n][: max_len + 1]), np.asarray(states[n_prompt:n][: max_len + 1])))
    return out


def batches(seqs, vocab_local: np.ndarray, batch: int, L: int, rng):
    """Padded [B, L+1] arrays: tokens (local draft-vocabulary ids, -1 outside), token ids, states, mask."""
    order = rng.permutation(len(seqs)) if rng is not None else np.arange(len(seqs))
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        B = len(idx)
        tok = np.zeros((batch, L + 1), np.int32)
        st = np.zeros((batch, L + 1, seqs[0][1].shape[1]), np.float32)
        valid = np.zeros((batch, L + 1), bool)
        for r, j in enumerate(idx):
            t, s = seqs[j]
            tok[r, : len(t)], st[r, : len(t)], valid[r, : len(t)] = t, s, True
        yield tok, vocab_local[tok], st, valid, B


def init_params(H: int, n_head: int, n_kv: int, hd: int, inter: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def lin(o, i):
        return (rng.standard_normal((o, i)) * 0.02).astype(np.float32)

    fc = lin(H, 2 * H)
    fc[:, H:] += np.eye(H, dtype=np.float32)  # starts as the feature passed through: g_t ~ f_t plus a learned change
    return {
        "fc.weight": fc, "fc.bias": np.zeros(H, np.float32),
        "layers.0.self_attn.q_proj.weight": lin(n_head * hd, H),
        "layers.0.self_attn.k_proj.weight": lin(n_kv * hd, H),
        "layers.0.self_attn.v_proj.weight": lin(n_kv * hd, H),
        "layers.0.self_attn.o_proj.weight": lin(H, n_head * hd) * 0.1,
        "layers.0.post_attention_layernorm.weight": np.ones(H, np.float32),
        "layers.0.mlp.gate_proj.weight": lin(inter, H),
        "layers.0.mlp.up_proj.weight": lin(inter, H),
        "layers.0.mlp.down_proj.weight": lin(H, inter) * 0.1,
    }


def make_model(config: Dict, P, steps: int):
    """JAX functions of (params, batch): the per-step logits/features of the training-time test, and the loss."""
    import jax
    import jax.numpy as jnp

    H, nh, nkv, hd = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"], \
        config["head_dim"]
    eps, theta, scale = config["rms_norm_eps"], config["rope_theta"], config["rope_scale"]
    L0 = "layers.0."

    def rope(x, pos):  # x [B, L, h, d], pos [L]
        inv = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
        ang = (pos.astype(jnp.float32) / scale)[:, None] * inv[None, :]
        cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def qkv(p, emb, feat, pos):
        B, L = emb.shape[:2]
        x = jnp.concatenate([emb, feat], axis=-1) @ p["fc.weight"].T + p["fc.bias"]
        q = (x @ p[L0 + "self_attn.q_proj.weight"].T).reshape(B, L, nh, hd)
        k = (x @ p[L0 + "self_attn.k_proj.weight"].T).reshape(B, L, nkv, hd)
        v = (x @ p[L0 + "self_attn.v_proj.weight"].T).reshape(B, L, nkv, hd)
        return x, rope(q, pos), rope(k, pos), v

    def rest(p, x, a):
        x = x + a @ p[L0 + "self_attn.o_proj.weight"].T
        y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * p[L0 + "post_attention_layernorm.weight"]
        g = y @ p[L0 + "mlp.gate_proj.weight"].T
        return x + (jax.nn.silu(g) * (y @ p[L0 + "mlp.up_proj.weight"].T)) @ p[L0 + "mlp.down_proj.weight"].T

    group = nh // nkv

    def forward(p, emb_next, states):
        """emb_next [B, L, H]: e(x_{t+1}) for t < L (then e of later tokens at later steps by shifting);
        states [B, L+1, H]. Returns features per step: list of [B, L, H] (step j at t predicts f_{t+j+1})."""
        B, L = emb_next.shape[:2]
        pos = jnp.arange(L)
        causal = jnp.tril(jnp.ones((L, L), bool))
        x, q, k0, v0 = qkv(p, emb_next, states[:, :L], pos)
        kk, vv = jnp.repeat(k0, group, axis=2), jnp.repeat(v0, group, axis=2)
        s = jnp.einsum("blhd,bmhd->bhlm", q, kk) / np.sqrt(hd)
        s = jnp.where(causal[None, None], s, -1e30)
        a = jnp.einsum("bhlm,bmhd->blhd", jax.nn.softmax(s, axis=-1), vv).reshape(B, L, nh * hd)
        g = rest(p, x, a)
        outs, dk, dv = [g], [], []
        for j in range(1, steps):
            # chain t at step j: input (g_{j-1,t}, x_{t+j+1}) at position t+j; keys: true pairs <= t, its chain
            e = jnp.concatenate([emb_next[:, j:], jnp.zeros((B, j, H), emb_next.dtype)], axis=1)
            x, q, k, v = qkv(p, e, g, pos + j)
            dk.append(jnp.repeat(k, group, axis=2))
            dv.append(jnp.repeat(v, group, axis=2))
            s0 = jnp.einsum("blhd,bmhd->bhlm", q, kk) / np.sqrt(hd)
            s0 = jnp.where(causal[None, None], s0, -1e30)
            sd = jnp.stack([jnp.einsum("blhd,blhd->bhl", q, d) for d in dk], axis=-1) / np.sqrt(hd)
            w = jax.nn.softmax(jnp.concatenate([s0, sd], axis=-1), axis=-1)
            a = jnp.einsum("bhlm,bmhd->blhd", w[..., :L], vv)
            a = a + sum(jnp.einsum("bhl,blhd->blhd", w[..., L + i], dv[i]) for i in range(len(dv)))
            g = rest(p, x, a.reshape(B, L, nh * hd))
            outs.append(g)
        return outs

    def loss(p, emb_next, states, valid):
        B, L = emb_next.shape[:2]
        outs = forward(p, emb_next, states)
        tot, parts = 0.0, []
        for j, g in enumerate(outs):
            tgt = jnp.concatenate([states[:, j + 1 :], jnp.zeros((B, j, H), states.dtype)], axis=1)[:, :L]
            ok = jnp.concatenate([valid[:, j + 1 :], jnp.zeros((B, j), bool)], axis=1)[:, :L]
            # the target token x_{t+j+2} must exist too: its state f_{t+j+1} is the one the backbone sampled from
            okf = ok.astype(jnp.float32)
            qd = jax.nn.softmax(jax.lax.stop_gradient(tgt @ P.T), axis=-1)
            logp = jax.nn.log_softmax(g @ P.T, axis=-1)
            ce = -jnp.sum(qd * logp, axis=-1)
            diff = jnp.abs(g - tgt)
            sl1 = jnp.mean(jnp.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5), axis=-1)
            n = jnp.maximum(okf.sum(), 1.0)
            lj = jnp.sum((ce + FEATURE_WEIGHT * sl1) * okf) / n
            parts.append(lj)
            tot = tot + STEP_DECAY**j * lj
        return tot, jnp.stack(parts)

    return forward, loss


def fit(data, model_path: str, proj: np.ndarray, embedding, draft_vocab: int = 8192, epochs: int = 4,
        lr: float = 1e-3, batch: int = 4, max_len: int = 200, seed: int = 0, steps: int = TTT_STEPS,
        config: Optional[Dict] = None, init=None, log=print):
    """Trains an EAGLE layer on `data` (train.collect's answers); `init`: EagleHeads to continue from (its config
    and draft vocabulary are kept). Returns (EagleHeads, the embedding rows the data needs)."""
    jax, optax = _need_jax()
    import jax.numpy as jnp

    from ..heads.eagle import EagleHeads, config_of

    H = proj.shape[1]
    if init is not None:
        config = init.config
    if config is None:
        config = config_of(_backbone_config(model_path, H), model_path)
    toks_all = np.concatenate([t[n:] for t, _, n in data])
    counts = np.bincount(toks_all, minlength=proj.shape[0])
    vocab = np.sort(np.argsort(-counts, kind="stable")[: min(draft_vocab, int((counts > 0).sum()))]).astype(np.int32)
    if init is not None and init.draft_vocab is not None:
        vocab = init.draft_vocab
    local = _local_ids(vocab, proj.shape[0])
    log(f"draft vocabulary: {len(vocab)} tokens cover {counts[vocab].sum() / counts.sum():.1%} of the answers")
    P = jnp.asarray(proj[vocab], dtype=jnp.float32)
    seqs = sequences(data, max_len)
    L = max(len(t) for t, _ in seqs) - 1
    uniq = np.unique(np.concatenate([t for t, _ in seqs]))
    E = np.zeros((proj.shape[0], H), np.float32)
    E[uniq] = embedding.rows(uniq)
    start = init.weights if init is not None else init_params(
        H, config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"], config["intermediate_size"],
        seed)
    params = _jax_params(start, H)
    n_batches = (len(seqs) + batch - 1) // batch
    total = max(epochs * n_batches, 2)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(total // 20, 1), total, lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.0))
    state = opt.init(params)
    _, loss_fn = make_model(config, P, steps)

    @jax.jit
    def update(params, state, emb, st, valid):
        (l, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, emb, st, valid)
        upd, state = opt.update(grads, state, params)
        return optax.apply_updates(params, upd), state, parts

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for ep in range(epochs):
        acc, nb = 0.0, 0
        for tok, _, st, valid, _ in batches(seqs, local, batch, L, rng):
            emb = E[tok[:, 1:]]
            params, state, parts = update(params, state, emb, st, valid)
            acc = acc + np.asarray(parts)
            nb += 1
        log(f"epoch {ep + 1}/{epochs}: loss per depth " + " ".join(f"{v:.3f}" for v in acc / nb)
            + f" ({time.perf_counter() - t0:.0f} s)")
    weights = {k: np.asarray(v) for k, v in params.items()}
    return EagleHeads(weights, config, format="eagle", draft_vocab=vocab, n_heads=max(steps, 1)), E


def _local_ids(vocab: np.ndarray, n_vocab: int) -> np.ndarray:
    """Token id -> row of the draft vocabulary, -1 outside it."""
    local = np.full(n_vocab, -1, np.int32)
    local[vocab] = np.arange(len(vocab))
    return local


def _jax_params(weights: Dict[str, np.ndarray], H: int):
    """The layer's weights as JAX arrays, with a zero fc bias where the checkpoint has none."""
    import jax.numpy as jnp

    params = {k: jnp.asarray(v) for k, v in weights.items()}
    params.setdefault("fc.bias", jnp.zeros(H, jnp.float32))
    return params


def evaluate(heads, data, proj: np.ndarray, E: np.ndarray, max_len: int = 200, steps: int = TTT_STEPS):
    """Per depth, on `data`: the draft-vocabulary logits at each position whose greedy target exists, given a
    right prefix (the training-time test's forward with true tokens), and the targets' draft-vocabulary rows (-1
    outside it): (logits per depth, targets per depth)."""
    import jax.numpy as jnp

    vocab = heads.draft_vocab
    local = _local_ids(vocab, proj.shape[0])
    P = jnp.asarray(proj[vocab], dtype=jnp.float32)
    forward, _ = make_model(heads.config, P, steps)
    params = _jax_params(heads.weights, heads.hidden_size)
    seqs = sequences(data, max_len)
    L = max(len(t) for t, _ in seqs) - 1
    logits: List[List[np.ndarray]] = [[] for _ in range(steps)]
    targets: List[List[np.ndarray]] = [[] for _ in range(steps)]
    for tok, loc, st, valid, B in batches(seqs, local, 8, L, None):
        outs = forward(params, jnp.asarray(E[tok[:, 1:]]), jnp.asarray(st))
        for j, g in enumerate(outs):
            z = np.asarray(g @ P.T)[:B]
            tgt = loc[:B, j + 2 : j + 2 + L]
            ok = valid[:B, j + 2 : j + 2 + L]
            Lj = tgt.shape[1]
            logits[j].append(z[:, :Lj][ok])
            targets[j].append(tgt[ok])
    return [np.concatenate(x) for x in logits], [np.concatenate(x) for x in targets]


def topk_accuracy(logits, targets, top_k: int = 10) -> List[List[float]]:
    """Per depth, cumulative top-1..top_k hit rates given a right prefix (the table `auto` prices trees with)."""
    out = []
    for z, t in zip(logits, targets):
        top = np.argsort(-z, axis=1)[:, :top_k]
        out.append(np.cumsum(top == t[:, None], axis=1).mean(axis=0).tolist())
    return out


def _backbone_config(model_path: str, H: int) -> Dict:
    """The draft layer's shape, taken from the backbone's (its attention heads, key/value heads, MLP width)."""
    from ..backbones.gguf_tensors import reader_of

    kv = reader_of(model_path).fields
    arch = kv.get("general.architecture", "llama")
    g = lambda k, d=None: kv.get(f"{arch}.{k}", d)  # noqa: E731
    n_head = int(g("attention.head_count"))
    n_kv = g("attention.head_count_kv", n_head)
    n_kv = int(n_kv[0] if isinstance(n_kv, (list, tuple)) else n_kv)
    ff = g("feed_forward_length")
    ff = int(ff[0] if isinstance(ff, (list, tuple)) else ff)
    return {"hidden_size": H, "intermediate_size": ff, "num_attention_heads": n_head, "num_key_value_heads": n_kv,
            "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(g("rope.freq_base", 10000.0)), "num_hidden_layers": 1}


def train(model_path: str, out_path: str, prompts: Optional[Sequence[str]] = None, held_out: int = 32,
          max_tokens: int = 200, epochs: int = 4, seed: int = 0, draft_vocab: int = 8192, lr: float = 1e-3,
          init=None, log=print):
    """The whole recipe (collect, fit, calibrate, measure, save); returns the EagleHeads."""
    import os

    from ..backbones.gguf_tensors import TokenEmbedding, read_output_matrix
    from ..default_model import check_model_path
    from .prompts import VALIDATION_PROMPTS, generic_prompts
    from .train import collect, reference_texts, train_answers

    _need_jax()
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise ValueError(f"{out_path}: cannot write the heads file there ({out_dir} is not a writable directory)")
    check_model_path(model_path)
    prompts = list(prompts or generic_prompts(model_path))
    if len(prompts) <= held_out:
        raise ValueError(f"need more than {held_out} prompts (the held-out split), got {len(prompts)}")
    step = len(prompts) // held_out
    test_idx = set(range(step - 1, len(prompts), step)[:held_out])
    data = collect(model_path, prompts, max_tokens=max_tokens, log=log)
    train_data = [d for i, d in enumerate(data) if i not in test_idx]
    split_data = [d for i, d in enumerate(data) if i in test_idx]
    proj = read_output_matrix(model_path)
    embedding = TokenEmbedding.from_gguf(model_path)
    heads, E = fit(train_data, model_path, proj, embedding, draft_vocab=draft_vocab, epochs=epochs, seed=seed,
                   max_len=max_tokens, lr=lr, init=init, log=log)
    val = collect(model_path, VALIDATION_PROMPTS, max_tokens=max_tokens, log=log)
    for d in val + split_data:  # embeddings of tokens seen only there
        u = np.unique(d[0])
        E[u] = embedding.rows(u)
    lg, tg = evaluate(heads, val, proj, E, max_len=max_tokens)
    temps, stats = calibrate(lg, tg)
    heads.temperature = np.array(temps)
    acc = topk_accuracy(lg, tg)
    lg_s, tg_s = evaluate(heads, split_data, proj, E, max_len=max_tokens)
    acc_split = topk_accuracy(lg_s, tg_s)
    heads.answers = train_answers(train_data)
    heads.reference, heads.reference_prompt_tokens = reference_texts(val)
    meta = {"n_vocab": int(proj.shape[0]), "trained_on": os.path.basename(model_path), "seed": seed,
            "method": "EAGLE draft layer, self-distilled (soft cross-entropy + 0.1 smooth-L1 on features), "
                      f"training-time test over {TTT_STEPS} depths, JAX/optax",
            "epochs": epochs + int((init.meta or {}).get("epochs", 0) if init is not None else 0),
            "train_prompts": len(train_data),
            "train_states": int(sum(len(d[0]) - d[2] for d in train_data)),
            "top_k_accuracy": acc, "top_k_accuracy_split": acc_split, "calibration": stats,
            "validation_prompts": len(VALIDATION_PROMPTS)}
    heads.save(out_path, extra_meta=meta, half=True)
    log("top-1 accuracy per depth given a right prefix, validation prompts: "
        + ", ".join(f"{a[0]:.2f}" for a in acc) + "; held-out split: " + ", ".join(f"{a[0]:.2f}" for a in acc_split))
    log("calibration (depth 1): temperature {temperature:.2f}, ECE {ece_before:.3f} -> {ece_after:.3f}".format(**stats[0]))
    return heads
