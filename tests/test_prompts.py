"""The training prompts stay apart from the prompts acceptance is measured on."""
import re

from llama_medusa.commands.bench import DEFAULT_PROMPTS
from llama_medusa.commands.prompts import VALIDATION_PROMPTS, generic_prompts, natural_prompts

# the subject of each validation / bench prompt: no training prompt may ask about it
HELD_OUT_SUBJECTS = [
    "center a div", "haiku about a train", "list and a tuple", "saving money", "sky blue", "sky is blue",
    "top 5 customers", "adopting a dog", "leap year", "World War", "hash table", "refrigerator", "Fibonacci",
    "cat and a dog", "duplicate values", "guitar", "binary search",
    "pull request", "forgetful wizard", "mutex", "beach holiday", "phases of the moon", "merges two dictionaries",
    "healthy heart", "capitalizes the first letter", "butterfly", "bloom filter", "landlord", "Monty Hall",
    "more than ten employees", "sunscreen", "tic-tac-toe", "backs up a folder", "1984", "presentations",
    "2D point", "northern lights",
]


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
