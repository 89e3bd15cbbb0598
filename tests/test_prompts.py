"""The training prompts stay apart from the prompts acceptance is measured on."""
import re

from llama_medusa.commands.bench import DEFAULT_PROMPTS
from llama_medusa.commands.prompts import HELD_OUT_SUBJECTS, VALIDATION_PROMPTS, generic_prompts, natural_prompts


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower())


def test_training_prompts_exclude_the_held_out_prompts_and_subjects():
    train = generic_prompts()  # without a model: every written prompt, no vocabulary words
    assert len(train) == len(set(train))
    held_out = VALIDATION_PROMPTS + DEFAULT_PROMPTS
    assert not {_norm(p) for p in train} & {_norm(p) for p in held_out}
    for subject in HELD_OUT_SUBJECTS:
        hits = [p for p in train if _norm(subject) in _norm(p)]
        assert not hits, f"training prompts ask about held-out subject {subject!r}: {hits[:3]}"
    # each held-out prompt's subject is listed above, so the check covers all of them
    for p in held_out:
        assert any(_norm(s) in _norm(p) for s in HELD_OUT_SUBJECTS), p


def test_natural_prompts_are_part_of_the_generic_list_and_seeded():
    nat = natural_prompts()
    assert nat == natural_prompts()
    assert len(nat) > 1000 and set(nat) <= set(generic_prompts())
    assert not set(nat) & set(generic_prompts(natural=False))


def test_prompt_files_in_the_formats_the_field_writes(tmp_path):
    """Plain lines, a JSON list, and JSON Lines as HumanEval, MT-bench and Alpaca write them; anything else is
    refused with the line that is wrong (it used to be benchmarked as a literal prompt, braces and all)."""
    import json

    import pytest

    from llama_medusa.commands.prompts import read_prompts

    def file(name, text):
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    assert read_prompts(file("a.txt", "Say hi.\n\nName a color.\n")) == ["Say hi.", "Name a color."]
    assert read_prompts(file("b.json", json.dumps(["One.", "Two."]))) == ["One.", "Two."]
    rows = [{"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    "},
            {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now a limerick."]},
            {"instruction": "Summarise this.", "input": ""}, "A bare string line."]
    got = read_prompts(file("c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"))
    assert got == ["def add(a, b):\n    ", "Write a haiku.", "Summarise this.", "A bare string line."]
    with pytest.raises(ValueError, match=r"c2\.jsonl, line 2: a JSON Lines prompt needs one of the keys prompt, "
                                         r"turns, instruction, question; this one has answer, id"):
        read_prompts(file("c2.jsonl", '{"prompt": "ok"}\n{"id": 3, "answer": "x"}\n'))
    with pytest.raises(ValueError, match=r"line 1: looks like JSON Lines but does not parse"):
        read_prompts(file("d.jsonl", '{"prompt": "unterminated\n'))
    with pytest.raises(ValueError, match=r"line 1: \"turns\" must be a non-empty list"):
        read_prompts(file("e.jsonl", '{"turns": []}\n'))
    with pytest.raises(ValueError, match=r"line 1: the prompt must be a string, got int"):
        read_prompts(file("f.jsonl", '{"prompt": 7}\n'))


def test_self_prompts_filter_repeats_held_out_subjects_and_junk():
    from llama_medusa.commands.self_prompts import keep

    seen: set = set()
    assert keep("  Can you explain how a bicycle gear works?\n", seen, HELD_OUT_SUBJECTS) == \
        "Can you explain how a bicycle gear works?"
    assert keep("can you explain how a BICYCLE gear works", seen, HELD_OUT_SUBJECTS) is None  # a repeat
    assert keep("Why is the sky blue on a summer day?", seen, HELD_OUT_SUBJECTS) is None  # a validation subject
    assert keep("Tell me about the Monty Hall problem.", seen, HELD_OUT_SUBJECTS) is None
    assert keep("Hi", seen, HELD_OUT_SUBJECTS) is None  # too short
    assert keep("word " * 81, seen, HELD_OUT_SUBJECTS) is None  # too long
    assert keep("Объясни, как работает велосипед?", seen, HELD_OUT_SUBJECTS) is None  # not the training language
    assert keep("What is <|im_start|> for?", seen, HELD_OUT_SUBJECTS) is None  # template tokens


def test_self_prompts_are_the_models_own_user_turns_seeded_and_cached(model_path, tmp_path, monkeypatch):
    """The model continues its chat template's user turn (llama.cpp's sampler, seeded): the same seed gives the
    same prompts from a cold cache, the cache gives them back, and none is about a held-out subject."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llama_medusa.commands.self_prompts import self_prompts, user_turn_prefix

    llm = Llama(model_path, vocab_only=True, verbose=False)
    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], "<|im_end|>", "<|im_start|>")
    llm.close()
    assert user_turn_prefix(fmt).endswith("<|im_start|>user\n")

    def draw(cache, n):
        monkeypatch.setenv("LLAMA_MEDUSA_CACHE", str(tmp_path / cache))
        return self_prompts(model_path, n, seed=3, parallel=4, log=lambda m: None)

    a = draw("a", 6)
    assert len(a) == 6 and len({_norm(p) for p in a}) == 6
    assert draw("b", 6) == a  # seeded
    assert draw("a", 4) == a[:4]  # read back from the cache
    for p in a:
        assert 8 <= len(p) and not any(_norm(s) in _norm(p) for s in HELD_OUT_SUBJECTS), p
