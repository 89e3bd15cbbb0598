"""I2_S -> Q2_0 / TQ2_0 / TQ1_0 for stock llama.cpp: exact codes and scales, and stock llama.cpp runs each converted
model to the same greedy tokens as the native engine (SiLU "bitnet" variant, the one upstream implements)."""
import gguf
import numpy as np
import pytest

from llama_medusa.backbones.i2s import packing as i2s
from llama_medusa.backbones.i2s.convert import TARGETS, convert, i2s_to_q2_0, i2s_to_tq2_0
from llama_medusa.backbones.i2s.engine import BitnetModel
from llama_medusa.backbones.i2s.gguf_file import GGUFFile
from llama_medusa.synth import write_bitnet


@pytest.fixture(scope="module")
def source(tmp_path_factory, model_path):
    # residual_gain 0.02: random ternary layers amplify the difference between bitnet.cpp's per-token int8 and
    # llama.cpp's Q8_K activations; small layer updates keep greedy tokens away from near-ties
    return write_bitnet(str(tmp_path_factory.mktemp("conv") / "bitnet.gguf"), arch="bitnet", n_ff=512, seed=3,
                        residual_gain=0.02, tokenizer_from=model_path)


@pytest.fixture(scope="module", params=sorted(TARGETS))
def converted(request, source, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("conv") / f"{request.param}.gguf")
    notes = []
    convert(source, dst, to=request.param, log=notes.append)
    return request.param, source, dst, notes


def dequant_q2_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """ggml's dequantize_row_q2_0, written out: blocks of 64 = fp16 d, 16 bytes; q = bits 2(j%4) of byte j/4."""
    b = raw.reshape(rows, cols // 64, 18)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    q = np.stack([(b[..., 2:] >> s) & 3 for s in (0, 2, 4, 6)], axis=-1).reshape(rows, cols // 64, 64)
    return ((q.astype(np.float32) - 1) * d).reshape(rows, cols)


def test_converted_weights_are_exact(converted):
    to, src, dst, _ = converted
    f, g = GGUFFile(src), GGUFFile(dst)
    assert g.fields["general.architecture"] == "bitnet" and g.fields["general.file_type"] == TARGETS[to][1]
    n = 0
    for name, t in g.tensors.items():
        if t.type != TARGETS[to][0]:
            assert (np.asarray(g.raw(name)) == np.asarray(f.raw(name))).all(), name  # norms, embedding: copied
            continue
        packed, scale = f.i2s(name)
        ref = i2s.unpack(np.asarray(packed)).astype(np.float32) * np.float32(np.float16(scale))
        rows, cols = ref.shape
        raw = np.asarray(g.raw(name)).reshape(rows, -1)
        if to == "q2_0":
            got = dequant_q2_0(raw, rows, cols)
        else:
            got = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[to.upper()])
        assert (got == ref).all(), name
        n += 1
    assert n == 7 * 2  # every ternary matrix of both layers


def test_stock_llama_cpp_agrees_on_greedy_tokens(converted):
    import llama_cpp

    _, src, dst, _ = converted
    m = BitnetModel(src, n_ctx=128, n_threads=2)
    toks = [int(t) for t in np.random.default_rng(0).integers(0, m.config["n_vocab"], 64)]
    _, ours = m.forward(toks)
    stock = llama_cpp.Llama(dst, n_ctx=128, logits_all=True, verbose=False)
    stock.eval(toks)
    theirs = np.array(stock.scores[:64])
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_relu2_models_get_the_silu_warning(tmp_path, model_path):
    src = write_bitnet(str(tmp_path / "b158.gguf"), arch="bitnet-b1.58", n_ff=512, tokenizer_from=model_path)
    notes = []
    convert(src, str(tmp_path / "out.gguf"), log=notes.append)
    assert any("SiLU" in n for n in notes)
    assert GGUFFile(str(tmp_path / "out.gguf")).fields["bitnet.embedding_length"] == 256  # arch keys renamed


def test_convert_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="multiple of 256"):
        i2s_to_tq2_0(i2s.pack(np.zeros((2, 128), np.int64)), 1.0)
    with pytest.raises(ValueError, match="code 3"):
        i2s_to_tq2_0(np.full((1, 64), 0xFF, np.uint8), 1.0)
    with pytest.raises(ValueError, match="code 3"):
        i2s_to_q2_0(np.full((1, 32), 0xFF, np.uint8), 1.0)
    with pytest.raises(ValueError, match="q2_0, tq2_0, tq1_0"):
        convert("x.gguf", str(tmp_path / "y.gguf"), to="q4_0")
