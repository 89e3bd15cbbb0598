"""`llama-medusa requantize`: copies of the test model in other weight types, by llama.cpp's quantize API.

The F16 and BF16 copies are what BENCHMARKS.md measures beside the shipped Q4_1: they must carry the weight type
asked for, and the shipped heads must read their output matrix (shared projection) as they read Q4_1's.
"""
import pytest
from conftest import THREADS

from llama_medusa import Llama
from llama_medusa.commands.cli import main as cli
from llama_medusa.commands.requantize import requantize

N_CTX = 1024


@pytest.mark.parametrize("ftype,ggml_type", [("f16", "F16"), ("bf16", "BF16")])
def test_copy_carries_the_weight_type_and_the_heads_read_it(model_path, tmp_path, ftype, ggml_type):
    import gguf

    out = requantize(model_path, str(tmp_path / f"smollm2-{ftype}.gguf"), ftype)
    r = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == ggml_type and types["blk.29.ffn_down.weight"] == ggml_type
    assert types["token_embd.weight"] == ggml_type  # SmolLM2 ties its output matrix to it: the heads' projection

    # "auto" recognises the copy as SmolLM2 by its metadata, whatever its file name and weight type
    med = Llama(out, medusa_heads="auto", medusa_choices="chain-2", medusa_lookup=0,
                n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS)
    msg = [{"role": "user", "content": "Explain what a hash table is."}]
    med.create_chat_completion(messages=msg, max_tokens=64, temperature=0)
    # the shipped heads' first head is right about a third of the time on this answer in every weight type
    # (0.35 on Q4_1, F16 and BF16); a projection read wrongly would draft noise, right ~never
    assert med.medusa_stats.steps > 0 and med.medusa_stats.head_acceptance[0] > 0.2


def test_unknown_weight_type_is_refused(model_path, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown weight type 'q3_k'; choose one of \['bf16', 'f16'"):
        requantize(model_path, str(tmp_path / "x.gguf"), "q3_k")
    with pytest.raises(SystemExit) as e:
        cli(["requantize", model_path, str(tmp_path / "x.gguf"), "--type", "q3_k"])
    assert e.value.code == 2 and "invalid choice: 'q3_k'" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
