"""`llama-medusa serve`: llama-cpp-python's OpenAI-compatible server with Medusa heads answers as stock's server.

Both servers run in-process through FastAPI's TestClient, one after the other (llama_cpp.server keeps one global
model proxy), on the real model with greedy requests: completions, chat and streamed chat.
"""
import json

import llama_cpp  # noqa: F401  (before numpy on some images)
import pytest

pytest.importorskip("fastapi", reason="the server extra (llama-cpp-python[server]) is part of .[test]")
from conftest import N_CTX, PROMPTS, THREADS  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from llama_cpp.server.app import create_app as stock_create_app  # noqa: E402
from llama_cpp.server.settings import ModelSettings, ServerSettings  # noqa: E402

from llama_medusa import Llama  # noqa: E402
from llama_medusa.commands import serve as server  # noqa: E402

REQUESTS = [
    ("/v1/completions", dict(prompt="The three primary colours are", max_tokens=48, temperature=0)),
    ("/v1/chat/completions", dict(messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=64, temperature=0)),
    ("/v1/chat/completions", dict(messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=64, temperature=0,
                                  stream=True)),
]


def answers(app):
    out = []
    with TestClient(app) as client:
        for route, body in REQUESTS:
            r = client.post(route, json=body)
            assert r.status_code == 200, r.text
            if body.get("stream"):
                chunks = [json.loads(line[len("data: "):]) for line in r.text.splitlines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
                assert len(chunks) > 10  # streamed, not one block
                out.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))
            else:
                choice = r.json()["choices"][0]
                out.append(choice["text"] if "text" in choice else choice["message"]["content"])
    return out


def test_served_medusa_answers_as_the_stock_server(model_path):
    common = dict(model=model_path, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS)
    want = answers(stock_create_app(server_settings=ServerSettings(), model_settings=[ModelSettings(**common)]))
    app = server.create_app(ServerSettings(), [server.MedusaModelSettings(medusa_choices="small", **common)])
    import llama_cpp.server.app as stock_app

    llm = stock_app._llama_proxy()  # the loaded model (get_llama_proxy would take the request locks)
    assert isinstance(llm, Llama) and len(llm.medusa_tree) == 8  # the shipped heads, on the tree asked for
    got = answers(app)
    assert got == want and all(len(a) > 40 for a in got)
    assert llm.medusa_stats.steps < llm.medusa_stats.tokens  # the last answer took fewer passes than tokens


def test_serve_command_line(model_path, tmp_path, capsys):
    from llama_medusa.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--medusa_heads" in capsys.readouterr().out
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    assert main(["serve", "--model", str(other)]) == 2  # no heads ship for it: said before anything loads
    assert "no heads ship with llama-medusa for other.gguf; pass --medusa_heads" in capsys.readouterr().err
    assert main(["serve", "--model", model_path, "--medusa_choices", "[[0], [0, 0"]) == 2
    assert "medusa_choices is not a JSON list of rank paths" in capsys.readouterr().err
