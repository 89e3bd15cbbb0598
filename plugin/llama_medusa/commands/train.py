"""`llama-medusa train`: heads for any GGUF llama.cpp loads, by self-distillation, numpy only.

1. Collect: the backbone answers generic prompts greedily (its own continuations are the targets), 16 prompts
   at a time, and the same decodes give the final-norm state h_t of every position. Cached per prompt, so an
   interrupted run resumes.
2. Fit: head k is a block h + W_out . SiLU(W_in . h + b + sum_j U_j . e(token_j)) followed by the backbone's
   (frozen, shared) output matrix; the U terms (token conditioning, default) feed it the embeddings of the root
   and of the tokens between the root and its target. Cross-entropy on token t+2+k against a mix of the greedy
   token and the backbone's own distribution, Adam, per-head loss weights. The softmax runs over the draft
   vocabulary (the most frequent answer tokens), which is also all the heads ever propose at inference.
3. Measure: per-head top-1..10 accuracy on the validation prompts (hand-written, not trained on), stored in the
   heads file for the tree choice, and on the held-out split of the training prompts.
4. Keep the training split's answers (token ids) in the heads file: the lookup's second source (answers.py);
   and the validation prompts with their answers: the texts `auto` replays the lookup over (lookup.py).
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence

import numpy as np

from .prompts import VALIDATION_PROMPTS, generic_prompts, vocab_topics  # noqa: F401 (the train API)

ANSWER_TOKENS = 200  # answer length per training prompt; part of the collection cache key


def model_cache_dir(model_path: str) -> str:
    """Where training keeps what it derives from one model file (answers, self-written prompts): keyed by the
    file's name and size; created on first use."""
    from ..default_model import cache_dir

    d = os.path.join(cache_dir(), "train", f"{os.path.basename(model_path)}-{os.path.getsize(model_path)}")
    os.makedirs(d, exist_ok=True)
    return d


def collect(model_path: str, prompts: Sequence[str], max_tokens: int = ANSWER_TOKENS, n_threads: Optional[int] = None,
            parallel: int = 16, log=print):
    """Greedy answers through the model's chat template and their final-norm states, one cached .npz per prompt:
    list of (tokens [n], states [n, H], prompt length). Answers are generated `parallel` prompts at a time, one
    token per sequence per llama_decode (2.8x the single-sequence rate on the 2-core CPUs), with the states taken
    from the same decodes; each prompt is decoded in its own small batch, so the answers are token-identical to
    stock llama-cpp-python's greedy ones (a 500-token multi-prompt batch rounds differently and drifts)."""
    import hashlib

    cdir = model_cache_dir(model_path)
    files = [os.path.join(cdir, hashlib.sha1(f"{max_tokens}\0{p}".encode()).hexdigest() + ".npz") for p in prompts]
    todo = [i for i, f in enumerate(files) if not os.path.exists(f)]
    t0 = time.perf_counter()
    if todo:
        gen = _Generator(model_path, parallel, max_tokens, n_threads)
        try:
            done = 0
            for g in range(0, len(todo), parallel):
                group = todo[g : g + parallel]
                for i, (toks, states, n_prompt) in zip(group, gen.run([prompts[i] for i in group])):
                    np.savez(files[i] + ".part.npz", tokens=toks, states=states, n_prompt=n_prompt)
                    os.replace(files[i] + ".part.npz", files[i])
                done += len(group)
                log(f"collected {done}/{len(todo)} answers ({time.perf_counter() - t0:.0f} s)")
        finally:
            gen.close()
    out = []
    for f in files:
        z = np.load(f)
        out.append((z["tokens"], z["states"], int(z["n_prompt"])))
    return out


class _Generator:
    """Batched greedy generation with final-norm states: one llama.cpp context with `parallel` sequences in a
    unified KV cache, embeddings (pooling NONE) and logits from every decode."""

    def __init__(self, model_path: str, parallel: int, max_tokens: int, n_threads: Optional[int]):
        import contextlib

        import llama_cpp
        from llama_cpp import _internals as internals
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from ..backbones.llamacpp import pool_nothing

        self.lc = llama_cpp
        self.parallel, self.max_tokens = parallel, max_tokens
        self.max_prompt = 512
        n_ctx = parallel * (self.max_prompt + max_tokens + 1)
        llm = llama_cpp.Llama(model_path, n_ctx=n_ctx, n_batch=self.max_prompt, flash_attn=True, embedding=True,
                              n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        pool_nothing(llm)
        llm._ctx.close()
        llm.context_params.n_seq_max = parallel
        llm.context_params.kv_unified = True
        llm._ctx = llm._stack.enter_context(
            contextlib.closing(internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False))
        )
        self.llm = llm
        self.H = int(llama_cpp.llama_model_n_embd(llm._model.model))
        self.nv = llm.n_vocab()
        self.fmt = None
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            tok_str = lambda t: llm._model.token_get_text(t) if t >= 0 else ""
            self.fmt = Jinja2ChatFormatter(template, tok_str(llm.token_eos()), tok_str(llm.token_bos()))
        self.batch = llama_cpp.llama_batch_init(max(self.max_prompt, parallel), 0, 1)

    def close(self):
        self.lc.llama_batch_free(self.batch)
        self.llm.close()

    def _put(self, n: int, tok: int, pos: int, seq: int) -> None:
        b = self.batch
        b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos, 1, True
        b.seq_id[n][0] = seq

    def _decode(self, n: int) -> np.ndarray:
        lc, ctx = self.lc, self.llm._ctx.ctx
        self.batch.n_tokens = n
        rc = lc.llama_decode(ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} while collecting training answers")
        return np.ctypeslib.as_array(lc.llama_get_embeddings(ctx), shape=(n, self.H)).copy()

    def _greedy(self, row: int) -> int:
        logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.llm._ctx.ctx, row), shape=(self.nv,))
        return int(np.argmax(logits))

    def run(self, prompts: Sequence[str]):
        lc, llm = self.lc, self.llm
        lc.llama_memory_clear(lc.llama_get_memory(llm._ctx.ctx), True)
        texts = [self.fmt(messages=[{"role": "user", "content": p}]).prompt if self.fmt else p for p in prompts]
        prompt_toks = [llm.tokenize(t.encode(), special=True) for t in texts]
        for p, pt in zip(prompts, prompt_toks):
            if not 0 < len(pt) <= self.max_prompt:
                raise ValueError(f"training prompt of {len(pt)} tokens (1..{self.max_prompt} allowed): {p[:60]!r}")
        seqs = [list(pt) for pt in prompt_toks]
        states: List[List[np.ndarray]] = [[] for _ in prompts]
        # each prompt in its own decode: batches as small as stock's keep llama.cpp's rounding that of stock
        for s, pt in enumerate(prompt_toks):
            for j, t in enumerate(pt):
                self._put(j, t, j, s)
            states[s].append(self._decode(len(pt)))
            seqs[s].append(self._greedy(len(pt) - 1))
        active = list(range(len(prompts)))
        vocab = llm._model.vocab
        while active:  # decode every unfinished answer's newest token; its state is kept, its logits extend it
            for n, s in enumerate(active):
                self._put(n, seqs[s][-1], len(seqs[s]) - 1, s)
            emb = self._decode(len(active))
            still = []
            for n, s in enumerate(active):
                states[s].append(emb[n : n + 1])
                if len(seqs[s]) - len(prompt_toks[s]) >= self.max_tokens or lc.llama_vocab_is_eog(vocab, seqs[s][-1]):
                    continue
                seqs[s].append(self._greedy(n))
                still.append(s)
            active = still
        return [(np.array(seqs[s], np.int32), np.concatenate(states[s]), len(prompt_toks[s]))
                for s in range(len(prompts))]

    def sample(self, prefix: Sequence[int], n: int, sampler, max_tokens: int):
        """n continuations of the same token prefix, each drawn with llama.cpp's `sampler` chain until an
        end-of-generation token or max_tokens: (drawn tokens without the end token, whether it ended) each."""
        lc, llm = self.lc, self.llm
        if not 0 < len(prefix) <= self.max_prompt:
            raise ValueError(f"a prefix of {len(prefix)} tokens (1..{self.max_prompt} allowed)")
        lc.llama_memory_clear(lc.llama_get_memory(llm._ctx.ctx), True)
        ctx, vocab = llm._ctx.ctx, llm._model.vocab
        out: List[List[int]] = [[] for _ in range(n)]
        for s in range(n):
            for j, t in enumerate(prefix):
                self._put(j, t, j, s)
            self._decode(len(prefix))
            out[s].append(int(lc.llama_sampler_sample(sampler, ctx, len(prefix) - 1)))
        active = [s for s in range(n) if not lc.llama_vocab_is_eog(vocab, out[s][-1])]
        while active:
            for k, s in enumerate(active):
                self._put(k, out[s][-1], len(prefix) + len(out[s]) - 1, s)
            self._decode(len(active))
            still = []
            for k, s in enumerate(active):
                if len(out[s]) >= max_tokens:
                    continue
                out[s].append(int(lc.llama_sampler_sample(sampler, ctx, k)))
                if not lc.llama_vocab_is_eog(vocab, out[s][-1]):
                    still.append(s)
            active = still
        ended = [bool(o) and bool(lc.llama_vocab_is_eog(vocab, o[-1])) for o in out]
        return [(o[:-1] if e else o, e) for o, e in zip(out, ended)]


def _silu_grad(a, sig):
    return sig * (1.0 + a * (1.0 - sig))


def fit_heads(data, proj: np.ndarray, n_heads: int = 3, draft_vocab: int = 8192, inner: int = 1024,
              epochs: int = 3, lr: float = 1e-3, batch: int = 256, seed: int = 0, embedding=None, soft: float = 1.0,
              head_weights: Optional[Sequence[float]] = None, log=print):
    """Trains K heads h + W_out . SiLU(W_in . h + b [+ sum_j U_j . e(token_j)]) through the backbone's (frozen)
    output matrix, restricted to the `draft_vocab` most frequent answer tokens (vLLM's truncated-vocabulary Medusa):
    the softmax runs over that set, and at inference the heads only ever propose from it. numpy + Adam.

    Head k learns token t+2+k from h_t (targets: the backbone's own greedy answers). With `embedding` (the
    backbone's TokenEmbedding) the heads are token-conditioned: head k also sees the root t+1 and the tokens
    t+2..t+1+k before its target (teacher-forced here; the top-1 drafts at inference). `soft` mixes the hard target
    with the backbone's own distribution over the draft vocabulary, computed from the collected state of the
    position before the target through the same projection (self-distillation of the full distribution: on the
    held-out split it lifts the acceptance of wide trees). What each choice gave on SmolLM2-135M: BENCHMARKS.md."""
    from ..heads import MedusaHeads

    H = proj.shape[1]
    K = n_heads
    rng = np.random.default_rng(seed)
    weights = np.ones(K) if head_weights is None else np.asarray(head_weights, dtype=np.float64)
    if len(weights) != K:
        raise ValueError(f"head_weights has {len(weights)} entries for {K} heads")
    toks_all = np.concatenate([toks[n_prompt:] for toks, _, n_prompt in data])
    counts = np.bincount(toks_all, minlength=proj.shape[0])
    vocab = np.sort(np.argsort(-counts, kind="stable")[: min(draft_vocab, int((counts > 0).sum()))]).astype(np.int32)
    local = np.full(proj.shape[0], -1, dtype=np.int64)
    local[vocab] = np.arange(len(vocab))
    P = np.ascontiguousarray(proj[vocab], dtype=np.float32)  # [N, H]
    log(f"draft vocabulary: {len(vocab)} tokens cover {counts[vocab].sum() / counts.sum():.1%} of the answers")

    # Training rows: positions t with every head's target inside the answer. S: all states; rows index into it.
    S = np.concatenate([states for _, states, _ in data]).astype(np.float32, copy=False)
    rows, chain_toks, targets, off = [], [], [], 0
    for toks, _, n_prompt in data:
        t = np.arange(max(n_prompt - 1, 0), len(toks) - 1 - K)
        rows.append(t + off)
        chain_toks.append(np.stack([toks[t + 1 + j] for j in range(K)], axis=1))  # root, then drafted positions
        targets.append(np.stack([local[toks[t + 2 + k]] for k in range(K)], axis=1))
        off += len(toks)
    rows, chain_toks, targets = np.concatenate(rows), np.concatenate(chain_toks), np.concatenate(targets)
    if len(rows) == 0:
        raise ValueError("no training positions: the collected answers are shorter than the number of heads")
    if embedding is not None:  # embeddings of the tokens that occur, gathered once
        uniq, inv = np.unique(chain_toks, return_inverse=True)
        E_u = embedding.rows(uniq)
        chain_idx = inv.reshape(chain_toks.shape)

    prm = {}
    for k in range(K):
        prm[f"w_in{k}"] = (rng.standard_normal((inner, H)) / np.sqrt(H)).astype(np.float32)
        prm[f"b_in{k}"] = np.zeros(inner, np.float32)
        prm[f"w_out{k}"] = np.zeros((H, inner), np.float32)
        if embedding is not None:
            for j in range(k + 1):
                prm[f"u{k}.{j}"] = np.zeros((inner, H), np.float32)
    m1 = {n: np.zeros_like(v) for n, v in prm.items()}
    m2 = {n: np.zeros_like(v) for n, v in prm.items()}
    step = 0
    ar = np.arange(batch)
    t0 = time.perf_counter()
    for ep in range(epochs):
        order = rng.permutation(len(rows))
        total, seen = np.zeros(K), 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            b = len(idx)
            x = S[rows[idx]]
            es = [E_u[chain_idx[idx, j]] for j in range(K)] if embedding is not None else None
            grads = {}
            for k in range(K):
                a = x @ prm[f"w_in{k}"].T + prm[f"b_in{k}"]
                if es is not None:
                    for j in range(k + 1):
                        a += es[j] @ prm[f"u{k}.{j}"].T
                sig = 1.0 / (1.0 + np.exp(-a))
                act = a * sig
                z = x + act @ prm[f"w_out{k}"].T
                logits = z @ P.T
                logits -= logits.max(axis=1, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=1, keepdims=True)
                tgt = targets[idx, k]
                ok = tgt >= 0
                tk = np.where(ok, tgt, 0)
                total[k] += -np.log(p[ar[:b], tk][ok] + 1e-12).sum()
                # d(loss)/d(logits) = p - target distribution (mix of the one-hot and the backbone's softmax)
                g = p
                g[ar[:b], tk] -= (1.0 - soft) * ok
                if soft > 0:
                    q = S[rows[idx] + 1 + k] @ P.T
                    q -= q.max(axis=1, keepdims=True)
                    q = np.exp(q)
                    q /= q.sum(axis=1, keepdims=True)
                    g -= soft * q
                else:
                    g[~ok] = 0.0
                g *= weights[k] / b
                dz = g @ P
                grads[f"w_out{k}"] = dz.T @ act
                da = (dz @ prm[f"w_out{k}"]) * _silu_grad(a, sig)
                grads[f"w_in{k}"] = da.T @ x
                grads[f"b_in{k}"] = da.sum(axis=0)
                if es is not None:
                    for j in range(k + 1):
                        grads[f"u{k}.{j}"] = da.T @ es[j]
            seen += b
            step += 1
            for n, g in grads.items():
                m1[n] = 0.9 * m1[n] + 0.1 * g
                m2[n] = 0.999 * m2[n] + 0.001 * g * g
                prm[n] -= lr * (m1[n] / (1 - 0.9**step)) / (np.sqrt(m2[n] / (1 - 0.999**step)) + 1e-8)
            if step % 200 == 0:
                done = (ep * len(order) + i + b) / (epochs * len(order))
                log(f"  {done:5.1%}  {time.perf_counter() - t0:5.0f} s  hard-target loss per head "
                    + " ".join(f"{v:.3f}" for v in total / seen))
        log(f"epoch {ep + 1}/{epochs}: hard-target loss per head " + " ".join(f"{v:.3f}" for v in total / seen)
            + f" over {seen} states")
    blocks = [[(prm[f"w_in{k}"], prm[f"b_in{k}"], prm[f"w_out{k}"])] for k in range(K)]
    cond = [[prm[f"u{k}.{j}"] for j in range(k + 1)] for k in range(K)] if embedding is not None else None
    return MedusaHeads(blocks, [None] * K, H, format="llama-medusa", draft_vocab=vocab, cond=cond)


def accuracy(heads, model_path: str, data, top_k: int = 10, proj=None, embedding=None) -> List[List[float]]:
    """Per-head top-1..top_k hit rates (cumulative) of the heads on (held-out) collected data, evaluated as the
    decoder does: through the native engine, token-conditioned heads on the root and the top-1 drafts (and then
    counted only where the drafts before them were right: accuracy given the prefix)."""
    from ..backbones.gguf_tensors import TokenEmbedding, read_output_matrix
    from ..drafting.drafter import HeadsDrafter

    proj = read_output_matrix(model_path) if proj is None else proj
    if heads.conditioned and embedding is None:
        embedding = TokenEmbedding.from_gguf(model_path)
    eng = heads.engine(model_path, heads.hidden_size, proj.shape[0], "i8", backbone_proj=proj)
    drafter = HeadsDrafter(heads, eng, embedding if heads.conditioned else None)
    hits = np.zeros((heads.n_heads, top_k))
    count = np.zeros(heads.n_heads)
    for toks, states, n_prompt in data:
        t = np.arange(max(n_prompt - 1, 0), len(toks) - 1)
        ids = drafter.propose_rows(states[t], toks[t + 1], top_k)
        prefix_ok = np.ones(len(t), dtype=bool)
        for k in range(heads.n_heads):
            inside = t + 2 + k < len(toks)
            # token-conditioned heads are scored where the drafts before them were right: the rate the tree
            # choice multiplies along each path (grow_tree; HeadsDrafter.fill conditions every node on its path)
            ok = inside & prefix_ok if heads.conditioned else inside
            target = np.where(inside, toks[np.minimum(t + 2 + k, len(toks) - 1)], -1)
            found = ids[ok, k, :] == target[ok][:, None]
            hits[k] += np.cumsum(found, axis=1).sum(axis=0)
            count[k] += ok.sum()
            prefix_ok &= inside & (ids[:, k, 0] == target)
    return (hits / np.maximum(count, 1)[:, None]).tolist()


def calibration(heads, model_path: str, data, proj=None, embedding=None, max_rows: int = 4000):
    """A softmax temperature per head fitted on held-out answers (drafting/calibration.py), for token-conditioned
    heads sharing the backbone's projection (the per-step tree's probabilities): each head's logits over the draft
    vocabulary given the true tokens before its target. Returns (temperatures, stats per head)."""
    from ..backbones.gguf_tensors import TokenEmbedding, read_output_matrix
    from ..drafting.calibration import calibrate

    proj = read_output_matrix(model_path) if proj is None else proj
    embedding = TokenEmbedding.from_gguf(model_path) if embedding is None else embedding
    eng = heads.engine(model_path, heads.hidden_size, proj.shape[0], "i8", backbone_proj=proj)
    local = np.full(proj.shape[0], -1, np.int64)
    dv = heads.draft_vocab if heads.draft_vocab is not None else np.arange(proj.shape[0])
    local[dv] = np.arange(len(dv))
    logits, targets = [], []
    for k in range(heads.n_heads):
        zs, ts = [], []
        for toks, states, n_prompt in data:
            t = np.arange(max(n_prompt - 1, 0), len(toks) - 2 - k)
            if len(t) == 0:
                continue
            emb = np.stack([embedding.rows(toks[t + 1 + j]) for j in range(k + 1)], axis=1).astype(np.float32)
            st = eng.head_states(np.ascontiguousarray(states[t], np.float32), head=k, emb=emb)[:, 0]
            zs.append(eng.project(0, np.ascontiguousarray(st)))
            ts.append(local[toks[t + 2 + k]])
        z, tt = np.concatenate(zs)[:max_rows], np.concatenate(ts)[:max_rows]
        logits.append(z)
        targets.append(tt)
    return calibrate(logits, targets)


def train(model_path: str, out_path: str, n_heads: int = 3, max_tokens: int = ANSWER_TOKENS, held_out: int = 32,
          prompts: Optional[Sequence[str]] = None, epochs: int = 3, draft_vocab: int = 8192, seed: int = 0,
          n_threads: Optional[int] = None, conditioned: bool = True, soft: float = 1.0, inner: int = 1024,
          log=print):
    """The whole recipe; returns (heads, validation accuracies)."""
    from ..backbones.gguf_tensors import TokenEmbedding, read_output_matrix
    from ..default_model import check_model_path

    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):  # found out before the hours of work
        raise ValueError(f"{out_path}: cannot write the heads file there ({out_dir} is not a writable directory)")
    check_model_path(model_path)
    if held_out < 1:
        raise ValueError(f"held_out must be at least 1 (the split the stored accuracies are measured on), got {held_out}")
    prompts = list(prompts or generic_prompts(model_path))
    if len(prompts) <= held_out:
        raise ValueError(f"need more than {held_out} prompts (the held-out split), got {len(prompts)}")
    # held-out prompts: every k-th, so both sets span all prompt kinds
    step = len(prompts) // held_out
    test_idx = set(range(step - 1, len(prompts), step)[:held_out])
    data = collect(model_path, prompts, max_tokens=max_tokens, n_threads=n_threads, log=log)
    train_data = [d for i, d in enumerate(data) if i not in test_idx]
    test_data = [d for i, d in enumerate(data) if i in test_idx]
    proj = read_output_matrix(model_path)
    embedding = TokenEmbedding.from_gguf(model_path) if conditioned else None
    heads = fit_heads(train_data, proj, n_heads=n_heads, draft_vocab=draft_vocab, inner=inner, epochs=epochs,
                      seed=seed, embedding=embedding, soft=soft, log=log)
    heads.answers = train_answers(train_data)
    meta = {
        "n_vocab": int(proj.shape[0]), "trained_on": os.path.basename(model_path), "seed": seed,
        "method": ("token-conditioned heads, " if conditioned else "")
        + f"self-distilled (soft target weight {soft}) cross-entropy over the draft vocabulary, shared projection",
        "epochs": epochs, "inner": inner,
        "train_prompts": len(train_data), "train_states": int(sum(len(d[0]) - d[2] for d in train_data)),
    }
    acc = measure_and_save(heads, model_path, out_path, test_data, meta, max_tokens, n_threads, proj, embedding, log)
    return heads, acc


def train_answers(train_data) -> np.ndarray:
    """The greedy answers of the training split, stored with the heads for the lookup's answers source."""
    from ..drafting.answers import concatenate

    return concatenate([toks[n_prompt:] for toks, _, n_prompt in train_data])


def reference_texts(val_data):
    """The validation prompts with their greedy answers, stored with the heads: `auto` replays the lookup gate
    over them on each machine's cost curve (LookupGate.replay). Returns (reference, reference_prompt_tokens)."""
    from ..drafting.answers import concatenate

    return (concatenate([toks for toks, _, _ in val_data]),
            np.array([n_prompt for _, _, n_prompt in val_data], dtype=np.int32))


def measure_and_save(heads, model_path: str, out_path: str, split_data, meta: dict, max_tokens: int = ANSWER_TOKENS,
                     n_threads: Optional[int] = None, proj=None, embedding=None, log=print):
    """Accuracies on the validation prompts (stored as top_k_accuracy, what `auto` uses) and on the held-out
    split of the training prompts (stored beside them), then the file (float16)."""
    val_data = collect(model_path, VALIDATION_PROMPTS, max_tokens=max_tokens, n_threads=n_threads, log=log)
    heads.reference, heads.reference_prompt_tokens = reference_texts(val_data)
    acc = accuracy(heads, model_path, val_data, proj=proj, embedding=embedding)
    acc_split = accuracy(heads, model_path, split_data, proj=proj, embedding=embedding)
    if heads.conditioned and heads.shared_projection:
        temps, stats = calibration(heads, model_path, val_data, proj, embedding)
        meta = dict(meta, temperature=temps, calibration=stats)
    heads.save(out_path, extra_meta=dict(meta, top_k_accuracy=acc, top_k_accuracy_split=acc_split,
                                         validation_prompts=len(VALIDATION_PROMPTS)), half=True)
    log("top-1 accuracy per head, validation prompts: " + ", ".join(f"{a[0]:.2f}" for a in acc)
        + "; held-out split of the training prompts: " + ", ".join(f"{a[0]:.2f}" for a in acc_split))
    return acc
