"""The answers index (answers.py) and the context search (lookup.find) against brute-force references, and the
refusals of answers that do not fit a model."""
import collections

import numpy as np
import pytest

from llama_medusa.drafting import answers, lookup
from llama_medusa.drafting.answers import AnswerIndex, concatenate
from llama_medusa.heads import MedusaHeads


def reference_next(corpus, context):
    """Longest n-gram (MAX_N..MIN_N) ending the context seen at least MIN_COUNT times inside one answer: its most
    frequent next token (ties: the smallest id) and share."""
    for n in range(min(answers.MAX_N, len(context)), answers.MIN_N - 1, -1):
        counts = collections.Counter()
        want = tuple(context[-n:])
        for a in corpus:
            for i in range(n, len(a)):
                if tuple(a[i - n : i]) == want:
                    counts[a[i]] += 1
        total = sum(counts.values())
        if total >= answers.MIN_COUNT:
            best = max(counts.values())
            tok = min(t for t, c in counts.items() if c == best)
            return tok, best / total, n
    return None


def test_index_equals_brute_force():
    rng = np.random.default_rng(1)
    # a small vocabulary and a repeated phrase, so that n-grams recur within and across answers
    phrase = [7, 8, 9, 10, 11]
    corpus = []
    for _ in range(40):
        a = rng.integers(0, 6, size=int(rng.integers(0, 30))).tolist()
        at = int(rng.integers(0, len(a) + 1))
        corpus.append(a[:at] + phrase[: int(rng.integers(1, 6))] + a[at:])
    index = AnswerIndex(concatenate(corpus))
    checked = found = 0
    for a in corpus[:15]:
        for i in range(1, len(a) + 1):
            want = reference_next(corpus, a[:i])
            got = index.next_token(a[:i])
            checked += 1
            found += want is not None
            if want is None:
                assert got is None, a[:i]
            else:
                assert got is not None and got[0] == want[0] and got[2] == want[2], (a[:i], got, want)
                assert abs(got[1] - want[1]) < 1e-6
    assert found > checked // 3  # the test data exercises matches, not only misses
    # no n-gram spans two answers: [4, 5] ends one answer and [6] starts the next twice, never followed within one
    split = AnswerIndex(concatenate([[1, 4, 5], [6, 2], [1, 4, 5], [6, 2]]))
    assert split.next_token([1, 4, 5]) is None
    assert split.n_tokens == 10


def test_continuation_extends_while_shares_stay_high():
    index = AnswerIndex(concatenate([[1, 2, 3, 4, 5, 6, 7]] * 2 + [[1, 2, 3, 4, 9]] * 3))
    # after 1 2 3: 4 (5 of 5); after 1 2 3 4: 9 (3 of 5, share 0.6 >= KEEP_GOING: go on); then nothing known
    chain, first, n = index.continuation([1, 2, 3], 8)
    assert first == 1.0 and n == 3 and chain[:2] == [4, 9]
    assert index.continuation([1, 2, 3], 1) == ([4], 1.0, 3)
    low = AnswerIndex(concatenate([[1, 2, 3, 4, 8, 8]] * 2 + [[1, 2, 3, 5, 8, 8]] * 2 + [[1, 2, 3, 6]] * 2))
    chain, first, _ = low.continuation([1, 2, 3], 8)
    assert chain == [4] and abs(first - 1 / 3) < 1e-6  # a third: the chain stops after it
    assert low.continuation([42, 43, 44], 8) == ([], 0.0, 0)


def test_find_is_the_earliest_of_the_longest_match():
    """lookup.find over n <= 6 equals trying n = 6..1 over the whole context (the per-n search it replaces)."""

    def per_n(ids, max_tokens, max_ngram):
        for n in range(min(max_ngram, len(ids) - 1), 0, -1):
            last = list(ids[-n:])
            for i in range(0, len(ids) - n):
                if list(ids[i : i + n]) == last:
                    return list(ids[i + n : i + n + max_tokens]), n
        return [], 0

    rng = np.random.default_rng(0)
    for trial in range(500):
        ids = rng.integers(0, 2 + trial % 6, size=int(rng.integers(1, 50)))
        for max_ngram in (1, 3, 6):
            got = lookup.find(ids, 5, max_ngram)
            assert got == per_n(ids, 5, max_ngram), (ids, max_ngram)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3), np.int32), "1-D array of token ids"),
    (np.array([0.5, 1.0], np.float32), "1-D array of token ids"),
    (np.array([1, -7, 2], np.int32), "answers hold -7: token ids are >= 0"),
    (np.array([1, 2**32 + 5], np.int64), "answers hold 4294967301, which is no token id"),
])
def test_malformed_answers_are_refused(bad, message):
    heads = MedusaHeads([[(np.zeros((8, 8), np.float32), None, None)]], [None], 8)
    with pytest.raises(ValueError, match=message):
        MedusaHeads(heads.blocks, heads.proj, 8, answers=bad)
    with pytest.raises(ValueError, match="answers must be a 1-D array"):
        AnswerIndex(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="answers hold -7: token ids are >= 0"):
        AnswerIndex(np.array([1, -7, 2]))


def test_answers_from_another_model_are_refused(tmp_path):
    heads = MedusaHeads([[(np.zeros((8, 8), np.float32), None, None)]], [None], 8,
                        answers=concatenate([[1, 2, 3], [60000, 4]]))
    path = str(tmp_path / "h.safetensors")
    heads.save(path)
    back = MedusaHeads.load(path)
    np.testing.assert_array_equal(back.answers, heads.answers)
    with pytest.raises(ValueError, match="Medusa heads .*h.safetensors: answers hold token id 60000, outside the "
                                         "model's vocabulary of 49152 tokens"):
        back.check_model(8, 49152)
    with pytest.raises(ValueError, match="token id 60000, outside the model's vocabulary of 49152"):
        AnswerIndex(back.answers, 49152)


def test_reference_texts_round_trip_and_malformed_ones_are_refused(tmp_path):
    """The reference texts `auto` replays the lookup over: stored with their prompt lengths, read back as
    (prompt + answer, prompt length); a length per text, each inside its text, or a clear refusal."""
    block = [[(np.zeros((8, 8), np.float32), None, None)]]
    texts = [[5, 6, 7, 8, 9], [1, 2, 3, 4]]
    heads = MedusaHeads(block, [None], 8, reference=concatenate(texts), reference_prompt_tokens=np.array([2, 1]))
    path = str(tmp_path / "h.safetensors")
    heads.save(path)
    back = MedusaHeads.load(path)
    assert [(list(t), n) for t, n in back.reference_texts()] == [(texts[0], 2), (texts[1], 1)]
    assert MedusaHeads(block, [None], 8).reference_texts() == []
    with pytest.raises(ValueError, match="reference and reference_prompt_tokens come together"):
        MedusaHeads(block, [None], 8, reference=concatenate(texts))
    for lengths in ([2], [2, 4], [0, 1], [2.0, 1.0]):
        with pytest.raises(ValueError, match=r"reference_prompt_tokens must hold one prompt length per reference "
                                             r"text \(2\), each shorter than its text"):
            MedusaHeads(block, [None], 8, reference=concatenate(texts), reference_prompt_tokens=np.array(lengths))
    with pytest.raises(ValueError, match="reference hold -7"):
        MedusaHeads(block, [None], 8, reference=np.array([1, -7, -1]), reference_prompt_tokens=np.array([1]))
    far = MedusaHeads(block, [None], 8, reference=concatenate([[1, 60000, 3]]), reference_prompt_tokens=np.array([1]))
    with pytest.raises(ValueError, match="reference hold token id 60000, outside the model's vocabulary of 49152"):
        far.check_model(8, 49152)
