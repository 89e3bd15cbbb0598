"""A test-only drafter that knows the true continuation and hides it among wrong siblings.

It puts the true token at rank 0 most of the time, at a random rank sometimes (so accepted paths go through later
branches and exercise the re-decode bookkeeping), and leaves it out sometimes (rejections).
"""
import numpy as np


class OracleDrafter:
    def __init__(self, reference, n_heads=4, seed=0, p_true=0.85, p_other_rank=0.35, vocab=49152):
        self.ref = [int(t) for t in reference]
        self.n_heads = n_heads
        self.rng = np.random.default_rng(seed)
        self.p_true, self.p_other_rank, self.vocab = p_true, p_other_rank, vocab
        self.calls = 0

    def propose(self, hidden, tokens, k):
        self.calls += 1
        n = len(tokens)
        out = self.rng.integers(100, self.vocab - 1, size=(self.n_heads, k))
        if list(tokens) == self.ref[:n]:
            for d in range(self.n_heads):
                if n + d < len(self.ref) and self.rng.random() < self.p_true:
                    r = int(self.rng.integers(0, k)) if self.rng.random() < self.p_other_rank else 0
                    out[d][out[d] == self.ref[n + d]] = 99  # no duplicate of the true token elsewhere
                    out[d, r] = self.ref[n + d]
        return out
