"""The offline walk (llama-medusa walk) counts exactly what greedy verification would accept."""
import numpy as np

from llama_medusa.commands.walk import offline_walk
from llama_medusa.drafting.pertree import PerStepTree
from llama_medusa.drafting.tree import Tree

V = 50


class Scripted(PerStepTree):
    """Drafts the answer's own next tokens (right=True) or tokens never in it; knows the answer by its context."""

    def __init__(self, answer, right, n_heads=3):
        PerStepTree.__init__(self, beam=2, top_k=2, max_nodes=16)
        self.answer, self.right, self.n_heads = np.asarray(answer), right, n_heads

    def _next(self, context_len, depth):
        i = context_len + depth - 1
        return int(self.answer[i]) if (self.right and i < len(self.answer)) else V - 1

    def fill(self, hidden, context, tree, k):
        return [int(context[-1])] + [self._next(len(context), len(n.path)) if n.path[-1] == 0 else V - 2
                                     for n in tree.nodes[1:]]

    def grow(self, hidden, context, room, max_depth):
        def one_hot(depth):
            p = np.full(V, 0.01 / (V - 1), np.float32)
            p[self._next(len(context), depth)] = 0.99
            return p

        return self.grow_from(lambda: one_hot(1), lambda nodes, toks, parent, d: np.stack([one_hot(d)] * len(nodes)),
                              int(context[-1]), room, max_depth, lambda ids: np.asarray(ids))


def texts_of(answer, n_prompt=5):
    return [(np.asarray(answer), np.zeros((len(answer), 4), np.float32), n_prompt)]


def test_right_drafts_give_depth_plus_bonus_tokens_a_pass():
    answer = list(range(1, 36))  # prompt 5 tokens, 30 answer tokens
    chain3 = Tree([(0,), (0, 0), (0, 0, 0)])
    r = offline_walk(Scripted(answer, True), texts_of(answer), chain3)
    # the first step is plain (root 5 -> 6), then passes of 3 drafts + the bonus from roots 6, 10, .., 30
    assert r["steps"] == 7 and r["tokens_per_pass"] == (4 * 7) / 7 and r["head0_top1"] == 1.0
    grown = offline_walk(Scripted(answer, True), texts_of(answer), None, max_nodes=3)
    assert grown["tokens_per_pass"] == r["tokens_per_pass"] and grown["nodes_per_step"] == 3


def test_wrong_drafts_give_one_token_a_pass_and_a_cut_answer_stops_the_chain():
    answer = list(range(1, 36))
    r = offline_walk(Scripted(answer, False), texts_of(answer), Tree([(0,), (0, 0)]))
    assert r["tokens_per_pass"] == 1.0 and r["head0_top1"] == 0.0 and r["steps"] == 28  # roots at 6 .. 33
    short = list(range(1, 13))  # 7 answer tokens: the second pass can accept only the one left
    r = offline_walk(Scripted(short, True), texts_of(short), Tree([(0,), (0, 0), (0, 0, 0)]))
    assert r["steps"] == 2 and r["tokens_per_pass"] == 3.0  # roots at 6 (3 drafts + bonus) and 10 (1 + bonus)


def test_walk_command_on_the_real_model(model_path, tmp_path, capsys):
    """`llama-medusa walk` from the command line: both shipped heads, fixed and per-step trees, on two prompts."""
    import json

    from llama_medusa.commands.cli import main as cli

    prompts = tmp_path / "p.txt"
    prompts.write_text("Name three colours.\nWrite a Python function that adds two numbers.\n")
    out = tmp_path / "walk.json"
    args = ["--prompts", str(prompts), "--max-tokens", "24", "--nodes", "8", "--json", str(out)]
    assert cli(["walk", "--model", model_path, *args]) == 0
    rows = json.loads(out.read_text())
    heads = {r["heads"].rsplit("/", 1)[-1] for r in rows}
    assert heads == {"smollm2-135m-instruct.eagle.safetensors", "smollm2-135m-instruct.heads.safetensors"}
    assert {r["tree"] for r in rows} >= {"mc_sim_7b_63[:16]", "mc_sim_7b_63", "per-step, at most 8 nodes"}
    for r in rows:
        assert 1.0 <= r["tokens_per_pass"] <= 1 + r["nodes"] and r["steps"] > 0
    assert capsys.readouterr().out.count("\n| smollm2-135m-instruct.") == len(rows)
