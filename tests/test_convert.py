"""I2_S -> TQ2_0 for stock llama.cpp: exact codes and scales, and stock llama.cpp runs the converted model to the
same greedy tokens as the native engine (SiLU "bitnet" variant, the one upstream implements)."""
import numpy as np
import pytest

import gguf
from llama_medusa import i2s
from llama_medusa.bitnet import BitnetModel
from llama_medusa.convert import convert, i2s_to_tq2_0
from llama_medusa.i2s_gguf import GGUFFile
from llama_medusa.synth import write_bitnet


@pytest.fixture(scope="module")
def converted(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("conv")
    # residual_gain 0.02: random ternary layers amplify the difference between bitnet.cpp's per-token int8 and
    # llama.cpp's Q8_K activations; small layer updates keep greedy tokens away from near-ties
    src = write_bitnet(str(d / "bitnet.gguf"), arch="bitnet", n_ff=512, seed=3, residual_gain=0.02,
                       tokenizer_from=model_path)
    notes = []
    convert(src, str(d / "tq2.gguf"), log=notes.append)
    return src, str(d / "tq2.gguf"), notes


def test_tq2_0_dequantizes_to_the_same_weights(converted):
    src, dst, _ = converted
    f = GGUFFile(src)
    r = gguf.GGUFReader(dst)
    assert r.fields["general.architecture"].contents() == "bitnet"
    for t in r.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.TQ2_0:
            continue
        packed, scale = f.i2s(t.name)
        ref = i2s.unpack(np.asarray(packed)).astype(np.float32) * np.float32(np.float16(scale))
        assert (gguf.quants.dequantize(t.data, t.tensor_type) == ref).all(), t.name


def test_stock_llama_cpp_agrees_on_greedy_tokens(converted):
    import llama_cpp

    src, dst, _ = converted
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
    r = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    assert r.fields["bitnet.embedding_length"].contents() == 256  # arch keys renamed


def test_convert_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="multiple of 256"):
        i2s_to_tq2_0(i2s.pack(np.zeros((2, 128), np.int64)), 1.0)
    with pytest.raises(ValueError, match="code 3"):
        i2s_to_tq2_0(np.full((1, 64), 0xFF, np.uint8), 1.0)
    with pytest.raises(ValueError, match="tq2_0"):
        convert("x.gguf", str(tmp_path / "y.gguf"), to="q2_0")
