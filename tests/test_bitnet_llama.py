"""Llama(model_path=<I2_S GGUF>): the native BitNet engine as the backbone, llama.cpp for tokenizer, chat template
and samplers. The reference is the engine's own plain decoding (BitnetModel.greedy: argmax over numpy, one token
per pass) and the same Llama without heads.

The model is a synthetic 2B-4T-architecture I2_S file with SmolLM2's tokenizer (so llama.cpp can tokenise and
apply a chat template); its text is noise, its numerics are the real engine's.
"""
import struct

import llama_cpp
import numpy as np
import pytest
from conftest import chat_prompt, stock_tokens
from oracle import OracleDrafter

from llama_medusa import Llama, MedusaHeads
from llama_medusa.backbones.i2s.backbone import I2SBackbone, is_i2s_gguf
from llama_medusa.backbones.i2s.engine import BitnetModel
from llama_medusa.backbones.i2s.gguf_file import GGUFFile
from llama_medusa.drafting.tree import MC_SIM_7B_63
from llama_medusa.synth import write_bitnet

N_CTX = 512
SHAPE = dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=384, residual_gain=0.3)


def mlp_heads(n_heads=3, hidden=256, seed=1):
    """MedusaBitNet-style heads (W_in, W_out, shared projection), random."""
    rng = np.random.default_rng(seed)
    blocks = [[(rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.05, None,
                rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.05)] for _ in range(n_heads)]
    return MedusaHeads(blocks, [None] * n_heads, hidden)


@pytest.fixture(scope="module")
def i2s_model(tmp_path_factory, model_path):
    return write_bitnet(str(tmp_path_factory.mktemp("i2s") / "synthetic-i2s.gguf"), tokenizer_from=model_path, **SHAPE)


@pytest.fixture(scope="module")
def i2s_with_heads(tmp_path_factory, model_path):
    """The same weights (same seed) with three heads embedded in the GGUF, as MedusaBitNet ships them."""
    return write_bitnet(str(tmp_path_factory.mktemp("i2s") / "synthetic-i2s-heads.gguf"), tokenizer_from=model_path,
                        heads=mlp_heads(), **SHAPE)


@pytest.fixture(scope="module")
def plain(i2s_model):
    return Llama(i2s_model, n_ctx=N_CTX, verbose=False)


@pytest.fixture(scope="module")
def engine_greedy(i2s_model):
    eng = BitnetModel(i2s_model, n_ctx=N_CTX)
    cache = {}

    def get(prompt_tokens, n):
        key = (tuple(prompt_tokens), n)
        if key not in cache:
            eng.truncate(0)
            cache[key] = eng.greedy(prompt_tokens, n)
        return cache[key]

    return get


def run(llm, pt, n, **kw):
    return stock_tokens(llm, pt, n, **kw)


def test_llama_picks_the_native_backbone(i2s_model, plain, model_path):
    assert is_i2s_gguf(i2s_model) and not is_i2s_gguf(model_path)
    assert isinstance(plain.backbone, I2SBackbone) and isinstance(plain, llama_cpp.Llama)
    assert plain.n_vocab() == 49152 and plain.n_ctx() == N_CTX
    # tokenisation is llama.cpp's (the SmolLM2 vocabulary the file carries)
    stock_vocab = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    text = b"Tokenise this, please: 12345 and unicode \xc3\xa9"
    assert plain.tokenize(text) == stock_vocab.tokenize(text)


def test_plain_decoding_equals_the_engine(i2s_model, plain, engine_greedy):
    pt = plain.tokenize(chat_prompt("Hello there").encode(), special=True)
    assert run(plain, pt, 100, temp=0.0) == engine_greedy(pt, 100)
    # a prompt longer than n_batch is decoded in chunks; logits_all keeps every row (logprobs)
    for logits_all in (False, True):
        chunked = Llama(i2s_model, n_ctx=N_CTX, n_batch=8, logits_all=logits_all, verbose=False)
        assert run(chunked, pt, 20, temp=0.0) == engine_greedy(pt, 20)


@pytest.mark.parametrize("choices,n_heads", [("small", 3), (MC_SIM_7B_63[:24], 4)])
def test_tree_decoding_identical(i2s_model, plain, engine_greedy, choices, n_heads):
    pt = plain.tokenize(chat_prompt("Write a poem about the sea").encode(), special=True)
    ref = engine_greedy(pt, 300)
    llm = Llama(i2s_model, n_ctx=N_CTX, verbose=False, medusa_choices=choices,
                medusa_heads=OracleDrafter(pt + ref, n_heads=n_heads, p_other_rank=0.5))
    assert run(llm, pt, 300, temp=0.0) == ref
    st = llm.medusa_stats
    assert st.mean_accepted > 2.0, str(st)  # several tokens per engine pass, later branches included
    assert st.redecoded == 0  # the engine commits any accepted path: nothing is decoded twice


def test_replayed_drafts_at_a_chosen_acceptance(i2s_model, engine_greedy):
    """bitnet-bench's ReplayDrafter: drafts right at the per-depth rates asked, outputs unchanged."""
    from llama_medusa.commands.bitnet_bench import ReplayDrafter, chain_tokens_per_pass

    pt = list(range(100, 108))
    ref = engine_greedy(pt, 200)
    got = {}
    for p in (1.0, 0.57, 0.2):
        llm = Llama(i2s_model, n_ctx=N_CTX, verbose=False, medusa_heads=ReplayDrafter(pt + ref, 3, [p] * 3),
                    medusa_choices="chain-3")
        assert run(llm, pt, 200, temp=0.0) == ref
        got[p] = llm.medusa_stats.mean_accepted
    assert got[1.0] > 3.8 and got[0.2] < got[0.57] < got[1.0]
    assert abs(got[0.57] - chain_tokens_per_pass([0.57] * 3)) < 0.35, got  # about 96 passes: sd of the mean ~0.1
    with pytest.raises(ValueError, match="hit_rates needs a probability in"):
        ReplayDrafter(ref, 3, [0.5, 1.5, 0.2])


def test_embedded_heads_are_found(i2s_with_heads, plain, engine_greedy):
    llm = Llama(i2s_with_heads, n_ctx=N_CTX, verbose=False, medusa_choices="small")
    assert llm._medusa.drafter.n_heads == 3 and len(llm.medusa_tree) == 8
    heads = llm._medusa.drafter.heads
    assert heads.format == "medusabitnet-gguf"
    want = mlp_heads()
    for k in range(3):
        assert (heads.blocks[k][0][0] == want.blocks[k][0][0]).all() and (heads.blocks[k][0][2] == want.blocks[k][0][2]).all()
    pt = plain.tokenize(chat_prompt("Tell me a story").encode(), special=True)
    assert run(llm, pt, 80, temp=0.0) == engine_greedy(pt, 80)
    assert llm.medusa_stats.steps > 0 and len(llm.medusa_stats.head_acceptance) == 3


def test_token_conditioned_heads_on_the_engine(i2s_model, plain, engine_greedy):
    """Conditioned heads read the I2_S file's F16 token embedding; output stays the engine's greedy one."""
    from llama_medusa.drafting.drafter import HeadsDrafter

    base = mlp_heads(hidden=256)
    rng = np.random.default_rng(5)
    cond = [[rng.standard_normal((256, 256)).astype(np.float32) * 0.05 for _ in range(k + 1)] for k in range(3)]
    heads = MedusaHeads(base.blocks, [None] * 3, 256, cond=cond)
    llm = Llama(i2s_model, n_ctx=N_CTX, verbose=False, medusa_heads=heads, medusa_choices=[[0], [1], [0, 0]])
    drafter = llm._medusa.drafter
    assert isinstance(drafter, HeadsDrafter) and drafter.max_depth == 2
    emb = llm.backbone.engine.file.array("token_embd.weight")
    np.testing.assert_array_equal(drafter.embedding.rows([7]), np.asarray(emb[7:8], np.float32))
    pt = plain.tokenize(chat_prompt("Tell me a story").encode(), special=True)
    assert run(llm, pt, 60, temp=0.0) == engine_greedy(pt, 60)
    assert llm.medusa_stats.steps > 0


def test_auto_tree_on_the_engine(i2s_with_heads):
    llm = Llama(i2s_with_heads, n_ctx=N_CTX, verbose=False)  # medusa_choices="auto" is the default
    auto = llm.medusa_auto
    assert auto is not None and set(auto["cost_s"]) >= {1, 2, 4, 8}
    assert auto["predicted_speedup"] >= 1.0 and len(llm.medusa_tree) == len(auto["choices"]) + 1


def test_chat_stream_and_stop_identical(i2s_model, plain, engine_greedy):
    pt = plain.tokenize(chat_prompt("Why is the sky blue?").encode(), special=True)
    llm = Llama(i2s_model, n_ctx=N_CTX, verbose=False, medusa_choices="small",
                medusa_heads=OracleDrafter(pt + engine_greedy(pt, 120), n_heads=3))
    msgs = [{"role": "user", "content": "Why is the sky blue?"}]
    want = plain.create_chat_completion(msgs, max_tokens=60, temperature=0.0)["choices"][0]["message"]["content"]
    got = llm.create_chat_completion(msgs, max_tokens=60, temperature=0.0)["choices"][0]["message"]["content"]
    assert got == want and len(want) > 20
    stream = "".join(c["choices"][0]["delta"].get("content", "")
                     for c in llm.create_chat_completion(msgs, max_tokens=60, temperature=0.0, stream=True))
    assert stream == want
    stop = want[len(want) // 2 : len(want) // 2 + 4]
    cut = llm.create_chat_completion(msgs, max_tokens=60, temperature=0.0, stop=[stop])["choices"][0]
    assert cut["message"]["content"] == want[: want.index(stop)] and cut["finish_reason"] == "stop"


def test_seeded_sampling_and_grammar_identical(i2s_model, plain, engine_greedy):
    pt = plain.tokenize(chat_prompt("Say something").encode(), special=True)
    llm = Llama(i2s_model, n_ctx=N_CTX, verbose=False, medusa_choices="small",
                medusa_heads=OracleDrafter(pt + engine_greedy(pt, 120), n_heads=3))
    for seed in (1, 2):
        plain.set_seed(seed)
        want = run(plain, pt, 60, temp=0.8, top_k=40)
        llm.set_seed(seed)
        assert run(llm, pt, 60, temp=0.8, top_k=40) == want
    grammar = llama_cpp.LlamaGrammar.from_string('root ::= "yes" | "no" | "maybe"', verbose=False)
    a = plain.create_completion("Answer:", max_tokens=8, temperature=0.0, grammar=grammar)["choices"][0]["text"]
    b = llm.create_completion("Answer:", max_tokens=8, temperature=0.0, grammar=grammar)["choices"][0]["text"]
    assert a == b and a in ("yes", "no", "maybe")


def test_context_window_and_prefix_reuse(i2s_model, engine_greedy):
    small = Llama(i2s_model, n_ctx=200, verbose=False)
    n_ctx = small.n_ctx()  # llama.cpp rounds the window up (to 256); the engine's cache follows it
    assert n_ctx >= 200
    pt = small.tokenize(b"The story begins")
    ref = engine_greedy(pt, n_ctx - len(pt))
    want = small.create_completion("The story begins", max_tokens=None, temperature=0.0)
    llm = Llama(i2s_model, n_ctx=200, verbose=False, medusa_choices=MC_SIM_7B_63[:24],
                medusa_heads=OracleDrafter(pt + ref, n_heads=4))
    got = llm.create_completion("The story begins", max_tokens=None, temperature=0.0)
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"] == "length"
    assert got["usage"]["total_tokens"] == want["usage"]["total_tokens"] == n_ctx
    assert list(llm.input_ids[: llm.n_tokens]) == pt + ref[: llm.n_tokens - len(pt)]
    with pytest.raises(ValueError, match="exceed context window"):
        llm.create_completion("word " * 300, max_tokens=4)
    # a later call whose prompt extends the cached tokens reuses them and still equals the engine's decoding
    pt2 = pt + ref[:10]
    assert run(llm, pt2, 20, temp=0.0) == engine_greedy(pt2, 20)


def test_bad_inputs(i2s_model, tmp_path):
    with pytest.raises(ValueError, match="hidden size 576"):
        Llama(i2s_model, n_ctx=N_CTX, verbose=False, medusa_heads=mlp_heads(hidden=576))
    with pytest.raises(ValueError, match="n_gpu_layers"):
        Llama(i2s_model, n_ctx=N_CTX, verbose=False, n_gpu_layers=-1)
    llm = Llama(i2s_model, n_ctx=N_CTX, verbose=False)
    with pytest.raises(NotImplementedError, match="states"):
        llm.save_state()
    with pytest.raises(NotImplementedError, match="embeddings"):
        llm.embed("hi")
    data = open(i2s_model, "rb").read()
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ValueError, match="truncated"):
        Llama(str(cut), verbose=False)


def _tensor_table(table, data):
    """Where the tensor-info table of `table` (a GGUFFile of `data`) lies: its (start, end) in the file, and
    where each tensor's offset field starts, by name."""
    infos = list(table.tensors.values())
    pos = start = data.index(struct.pack("<Q", len(infos[0].name)) + infos[0].name.encode())
    offset_at = {}
    for t in infos:
        pos += 8 + len(t.name) + 4 + 8 * len(t.shape) + 4
        offset_at[t.name] = pos
        pos += 8
    return start, pos, offset_at


def test_a_damaged_tensor_table_is_refused(i2s_model, tmp_path):
    """One word of the tensor table changed (a name, a dimension, a type, an offset): a ValueError naming the
    damage, never another tensor's bytes read as weights (a zeroed offset used to load) nor a crash."""
    data = open(i2s_model, "rb").read()
    table = GGUFFile(i2s_model)
    start, end, offset_at = _tensor_table(table, data)
    path = tmp_path / "damaged.gguf"

    def refused(mutated, match):
        path.write_bytes(mutated)
        with pytest.raises(ValueError, match=match):
            Llama(str(path), n_ctx=64, verbose=False)

    # a 2-D tensor after the first, so that offset 0 is another tensor's
    name = next(n for n in list(offset_at)[1:] if len(table.tensor(n).shape) == 2)
    at = offset_at[name]
    refused(data[:at] + struct.pack("<Q", 0) + data[at + 8:], "overlap in the file")
    refused(data[:at] + struct.pack("<Q", struct.unpack_from("<Q", data, at)[0] + 4) + data[at + 8:],
            f"tensor {name} starts at data offset .* not a multiple of the alignment")
    shape_at = at - 4 - 8 * 2  # ne0 of a 2-D tensor
    refused(data[:shape_at] + struct.pack("<QQ", 1 << 32, 1 << 32) + data[shape_at + 16:],
            f"tensor {name} runs past the end")  # 2^64 elements: numpy's product wrapped that round to 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = int(rng.integers(start, end - 8))
        w = int(rng.choice([4, 8]))
        old = int.from_bytes(data[p:p + w], "little")
        new = int(rng.choice([0, 1, 36, 1 << (8 * w - 1), old ^ (1 << int(rng.integers(8 * w)))]))
        if new == old:
            new ^= 1
        refused(data[:p] + new.to_bytes(w, "little") + data[p + w:], None)


def test_code_3_in_the_weights_is_refused_at_load(i2s_model, tmp_path):
    """A byte whose 2-bit field is 3 (no ternary value) in any weight makes the file unloadable, with the tensor
    named: before, such a file loaded through Llama and generated noise without a word."""
    table = GGUFFile(i2s_model)
    t = table.tensors["blk.1.ffn_up.weight"]
    data = bytearray(open(i2s_model, "rb").read())
    data[t.offset + t.nbytes // 2 - 40] |= 0b00001100  # one field of one byte in the middle of the tensor
    bad = tmp_path / "code3.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight holds code 3 at byte \d+"):
        Llama(str(bad), n_ctx=N_CTX, verbose=False)
    Llama(i2s_model, n_ctx=N_CTX, verbose=False).close()  # the intact file still loads
