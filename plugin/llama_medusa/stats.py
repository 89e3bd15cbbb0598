"""Per-call speculation statistics (`Llama.medusa_stats`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List


@dataclass
class MedusaStats:
    steps: int = 0  # backbone verify passes (llama_decode calls after the prompt)
    tokens: int = 0  # tokens produced by those passes
    batch_tokens: int = 0  # tokens submitted to those passes (tree nodes + re-decoded ones)
    redecoded: int = 0  # accepted tokens decoded a second time to keep KV cells in position order
    lookup_nodes: int = 0  # tree nodes grafted from the lookup (lookup.py)
    lookup_accepted: int = 0  # of those, accepted ones
    answers_nodes: int = 0  # lookup nodes that came from the model's earlier answers (answers.py)
    answers_accepted: int = 0  # of those, accepted ones
    # by tree depth d+1 (head d's level; levels below the heads' hold only lookup nodes):
    head_proposed: List[int] = field(default_factory=list)  # steps whose tree reached depth d+1
    head_accepted: List[int] = field(default_factory=list)  # steps in which a depth-(d+1) node was accepted
    time_prompt: float = 0.0
    time_verify: float = 0.0  # llama_decode of the trees
    time_heads: float = 0.0  # native head evaluation
    time_sample: float = 0.0  # sampler chain over the accepted path
    time_bookkeeping: float = 0.0  # batch building, KV cache edits, copies
    plain: bool = False  # the call decoded plainly: no heads, or `auto` found no draft that pays (llm.medusa_auto)

    @property
    def mean_accepted(self) -> float:
        """Tokens per backbone pass (1.0 = no speculation gain)."""
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def head_acceptance(self) -> List[float]:
        return [a / p if p else 0.0 for a, p in zip(self.head_accepted, self.head_proposed)]

    @property
    def accepted_lengths(self) -> List[int]:
        """Passes by how many drafted tokens they accepted: [j] = passes that kept exactly j (each also gives the
        token sampled at its deepest accepted node). Read off head_accepted, which counts passes that reached
        depth d+1."""
        reached = [self.steps] + self.head_accepted
        hist = [a - b for a, b in zip(reached, reached[1:] + [0])]
        while hist and not hist[-1]:
            hist.pop()
        return hist

    @property
    def time_total(self) -> float:
        return self.time_verify + self.time_heads + self.time_sample + self.time_bookkeeping

    def note_depths(self, proposed_depth: int, accepted_depth: int) -> None:
        need = max(proposed_depth, len(self.head_proposed))
        self.head_proposed += [0] * (need - len(self.head_proposed))
        self.head_accepted += [0] * (need - len(self.head_accepted))
        for d in range(proposed_depth):
            self.head_proposed[d] += 1
        for d in range(accepted_depth):
            self.head_accepted[d] += 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(mean_accepted=self.mean_accepted, head_acceptance=self.head_acceptance,
                 accepted_lengths=self.accepted_lengths, time_total=self.time_total)
        return d

    def __str__(self) -> str:
        if self.plain:
            return (f"{self.tokens} tokens decoded plainly, one per pass, in {self.time_verify * 1e3:.0f} ms: no draft "
                    "pays on this machine (llm.medusa_auto says what was measured)")
        acc = ", ".join(f"{a:.2f}" for a in self.head_acceptance)
        return (
            f"{self.tokens} tokens in {self.steps} passes ({self.mean_accepted:.2f}/pass), acceptance by depth [{acc}], "
            f"verify {self.time_verify*1e3:.0f} ms, heads {self.time_heads*1e3:.0f} ms, "
            f"sample {self.time_sample*1e3:.0f} ms, bookkeeping {self.time_bookkeeping*1e3:.0f} ms"
        )
