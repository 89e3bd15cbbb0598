"""The first Python run: the embedded default model and the heads that ship for it, in one line, and every Python
block of README.md run as written (a README example that breaks fails here)."""
import os
import re

import pytest
from conftest import THREADS

from llama_medusa import Llama, default_model_path
from llama_medusa.heads.shipped import SMOLLM2_EAGLE, shipped_heads_path
from llama_medusa.stats import MedusaStats

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def readme_python_blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_python_examples():
    assert len(readme_python_blocks()) >= 2


@pytest.mark.model
@pytest.mark.parametrize("i", range(len(readme_python_blocks())))
def test_readme_example_runs(i, capsys):
    code = readme_python_blocks()[i]
    exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip(), "each README example prints what it shows"


def test_auto_heads_on_the_default_model(model_path):
    assert shipped_heads_path(model_path) == SMOLLM2_EAGLE
    llm = Llama(model_path, medusa_heads="auto", medusa_choices="chain-2", medusa_lookup=0, n_ctx=512, verbose=False,
                **THREADS)
    assert llm._medusa.drafter.heads.source == SMOLLM2_EAGLE
    llm.create_completion("The three primary colours are", max_tokens=24, temperature=0)
    line = str(llm.medusa_stats)
    assert "passes" in line and "acceptance by depth" in line and "verify" in line
    llm.close()


def test_from_default_opens_the_embedded_model_with_its_heads(model_path):
    llm = Llama.from_default(medusa_choices="chain-1", medusa_lookup=0, n_ctx=512, verbose=False, **THREADS)
    assert llm.model_path == default_model_path() == model_path
    assert llm._medusa.drafter.heads.source == SMOLLM2_EAGLE
    llm.close()


def test_auto_heads_on_a_model_without_shipped_heads(model_path, tmp_path):
    from llama_medusa.synth import write_bitnet

    other = write_bitnet(str(tmp_path / "other.gguf"), tokenizer_from=model_path, n_embd=256, n_layer=2, n_head=4,
                         n_head_kv=2, n_ff=384)
    assert shipped_heads_path(other) is None
    with pytest.raises(ValueError, match=r"no heads ship with llama-medusa for other\.gguf.*llama-medusa train"):
        Llama(other, medusa_heads="auto", n_ctx=512, verbose=False)


def test_plain_decoding_says_so_in_its_stats(model_path):
    llm = Llama(model_path, n_ctx=512, verbose=False, **THREADS)
    text = llm.create_completion("One, two,", max_tokens=8, temperature=0)["choices"][0]["text"]
    assert text and isinstance(llm.medusa_stats, MedusaStats)
    st = llm.medusa_stats
    assert st.plain and st.tokens == 8 and "decoded plainly" in str(st)
    llm.close()
