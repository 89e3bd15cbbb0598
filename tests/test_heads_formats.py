"""The three heads formats, format detection, and the errors bad files must give."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from llama_medusa import MedusaHeads
from llama_medusa.heads.medusabitnet import write as write_gguf_heads

H, V = 576, 49152


def medusa_checkpoint(d, K=3, hidden=H, vocab=V, config_heads=None, prefix=""):
    rng = np.random.default_rng(0)
    t = {}
    for k in range(K):
        t[f"{prefix}{k}.0.linear.weight"] = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.01
        t[f"{prefix}{k}.0.linear.bias"] = rng.standard_normal(hidden).astype(np.float32) * 0.01
        t[f"{prefix}{k}.1.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float16)
    path = os.path.join(d, "medusa_lm_head.safetensors")
    save_file(t, path)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"medusa_num_heads": config_heads or K, "medusa_num_layers": 1}, f)
    return path


def test_medusa_safetensors(tmp_path):
    path = medusa_checkpoint(str(tmp_path), K=2, vocab=100, config_heads=5)
    heads = MedusaHeads.load(path)
    assert heads.format == "medusa" and heads.n_heads == 2 and heads.vocab_size == 100
    assert heads.blocks[0][0][1] is not None and heads.blocks[0][0][2] is None
    assert "2" in heads.meta["note"]  # config under-reports or over-reports: weights win, and we say so
    assert MedusaHeads.load(str(tmp_path)).n_heads == 2  # a directory works too


def test_medusa_full_model_prefix(tmp_path):
    path = medusa_checkpoint(str(tmp_path), K=2, vocab=50, prefix="medusa_head.")
    assert MedusaHeads.load(path).n_heads == 2


def test_gguf_embedded_heads(tmp_path):
    rng = np.random.default_rng(1)
    blocks = [[(rng.standard_normal((32, 16)).astype(np.float32), None,
                rng.standard_normal((16, 32)).astype(np.float32))] * 2 for _ in range(3)]
    heads = MedusaHeads(blocks, [None] * 3, 16)
    path = str(tmp_path / "heads.gguf")
    write_gguf_heads(path, heads)
    back = MedusaHeads.load(path)
    assert back.format == "medusabitnet-gguf" and back.n_heads == 3 and back.shared_projection
    for a, b in zip(heads.blocks, back.blocks):
        for (wi, _, wo), (wi2, bi2, wo2) in zip(a, b):
            np.testing.assert_array_equal(wi, wi2)
            np.testing.assert_array_equal(wo, wo2)
            assert bi2 is None


def test_own_format_roundtrip_both_projections(tmp_path):
    rng = np.random.default_rng(2)
    blk = lambda: [(rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32), None)]
    for proj in ([None, None], [rng.standard_normal((20, 8)).astype(np.float32)] * 2):
        heads = MedusaHeads([blk(), blk()], proj, 8, meta={"n_vocab": 20})
        path = str(tmp_path / "h.safetensors")
        heads.save(path)
        back = MedusaHeads.load(path)
        assert back.format == "llama-medusa" and back.shared_projection == (proj[0] is None)
        np.testing.assert_array_equal(back.blocks[1][0][0], heads.blocks[1][0][0])
        assert back.meta["n_vocab"] == 20


def test_pickles_are_refused_with_a_conversion_hint(tmp_path):
    p = tmp_path / "medusa_lm_head.pt"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match="save_file"):
        MedusaHeads.load(str(p))
    p2 = tmp_path / "pytorch_model.bin"
    p2.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="never unpickles"):
        MedusaHeads.load(str(p2))
    with pytest.raises(ValueError, match="pickle"):
        MedusaHeads.load(str(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_corrupt_files_give_clear_errors(tmp_path, damage):
    path = medusa_checkpoint(str(tmp_path), K=1, vocab=64)
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) // 2])
        msg = "corrupt or truncated|cannot read"
    elif damage == "garbage":
        open(path, "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        msg = "corrupt or truncated|cannot read"
    elif damage == "empty":
        open(path, "wb").write(b"")
        msg = "not a safetensors or GGUF"
    else:
        os.remove(path)
        path = path + ".nope"
        msg = "does not exist"
    with pytest.raises(ValueError, match=msg):
        MedusaHeads.load(path)


def test_truncated_gguf(tmp_path):
    heads = MedusaHeads([[(np.ones((4, 4), np.float32), None, np.ones((4, 4), np.float32))]], [None], 4)
    path = str(tmp_path / "h.gguf")
    write_gguf_heads(path, heads)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-20])
    with pytest.raises(ValueError, match="the file is truncated"):
        MedusaHeads.load(path)


def test_safetensors_without_heads(tmp_path):
    path = str(tmp_path / "x.safetensors")
    save_file({"something.else": np.zeros(3, np.float32)}, path)
    with pytest.raises(ValueError, match="no Medusa heads found"):
        MedusaHeads.load(path)


def test_inconsistent_shapes_in_file(tmp_path):
    path = str(tmp_path / "medusa_lm_head.safetensors")
    save_file({"0.0.linear.weight": np.zeros((8, 8), np.float32), "0.1.weight": np.zeros((10, 6), np.float32)}, path)
    with pytest.raises(ValueError, match="projection has shape"):
        MedusaHeads.load(path)


def test_mismatch_with_model_names_the_numbers():
    heads = MedusaHeads([[(np.zeros((8, 8), np.float32), None, None)]], [np.zeros((10, 8), np.float32)], 8)
    with pytest.raises(ValueError, match="hidden size 8.*576"):
        heads.check_model(576, 10)
    with pytest.raises(ValueError, match="10 tokens.*49152"):
        heads.check_model(8, 49152)


@pytest.mark.parametrize("bad", [[], [3, 1, 2], [1, 1, 2], [-1, 2], [0.5, 1.5], [1, 2**32 + 5], [[1, 2]]])
def test_malformed_draft_vocab_is_refused(bad):
    blocks = [[(np.zeros((8, 8), np.float32), None, None)]]
    with pytest.raises(ValueError, match="draft_vocab must be a non-empty, sorted list of distinct token ids"):
        MedusaHeads(blocks, [None], 8, draft_vocab=np.asarray(bad))
    kept = MedusaHeads(blocks, [None], 8, draft_vocab=np.array([0, 5, 7], np.int64))
    np.testing.assert_array_equal(kept.draft_vocab, [0, 5, 7])


def test_a_safetensors_header_starting_like_a_pickle_still_loads(tmp_path):
    # a safetensors file opens with its header length: 0x80 as the low byte is a pickle's first byte too
    heads = MedusaHeads([[(np.eye(8, dtype=np.float32), None, None)]], [None], 8)
    path = str(tmp_path / "h.safetensors")
    for n in range(300):
        heads.save(path, extra_meta={"pad": "x" * n})
        with open(path, "rb") as f:
            if f.read(1) == b"\x80":
                break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    back = MedusaHeads.load(path)
    np.testing.assert_array_equal(back.blocks[0][0][0], heads.blocks[0][0][0])


@pytest.mark.parametrize("meta, message", [
    ("not json", "metadata is not valid JSON"),
    ("[1, 2]", "metadata must be a JSON object, got list"),
    ('{"hidden_size": 8}', "needs n_heads as a positive integer, got None"),
    ('{"n_heads": "1", "hidden_size": 8}', "needs n_heads as a positive integer, got '1'"),
    ('{"n_heads": 1, "hidden_size": 0}', "needs hidden_size as a positive integer, got 0"),
    ('{"n_heads": 1, "hidden_size": 8, "version": "2"}', "version '2', not an integer"),
    ('{"n_heads": 1, "hidden_size": 8, "top_k_accuracy": "high"}', "top_k_accuracy must be a row per head"),
    ('{"n_heads": 2, "hidden_size": 8, "top_k_accuracy": [[0.4, 0.5]]}', "top_k_accuracy must be a row per head"),
    ('{"n_heads": 1, "hidden_size": 8, "top_k_accuracy": [[0.5, 0.4]]}', "non-decreasing"),
    ('{"n_heads": 1, "hidden_size": 8, "top_k_accuracy": [[0.5, 1.5]]}', "within \\[0, 1\\]"),
])
def test_damaged_own_metadata_is_refused(tmp_path, meta, message):
    path = str(tmp_path / "h.safetensors")
    save_file({"head.0.block.0.w_in": np.zeros((8, 8), np.float32)}, path, metadata={"llama_medusa": meta})
    with pytest.raises(ValueError, match=message):
        MedusaHeads.load(path)
