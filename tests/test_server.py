"""`llama-medusa serve`: llama-cpp-python's OpenAI-compatible server with Medusa heads answers as stock's server.

Both servers run in-process through FastAPI's TestClient, one after the other (llama_cpp.server keeps one global
model proxy), on the real model with greedy requests: completions, chat and streamed chat.
"""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

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


def text_of(r, body) -> str:
    """The generated text of one OpenAI-style response, streamed or not."""
    assert r.status_code == 200, r.text
    if body.get("stream"):
        chunks = [json.loads(line[len("data: "):]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert len(chunks) > 10 and r.text.rstrip().endswith("data: [DONE]")  # streamed, not one block, and whole
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    choice = r.json()["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def answers(client):
    """REQUESTS' texts through a client (FastAPI's TestClient or an httpx.Client on a live server)."""
    return [text_of(client.post(route, json=body), body) for route, body in REQUESTS]


def refused(client):
    """A body its request model refuses gets 400 with the fields named; the model then still answers."""
    r = client.post("/v1/completions", json=dict(prompt="hi", max_tokens=-5, temperature="hot"))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
    assert "max_tokens: Input should be greater than or equal to 0" in error["message"] and "temperature" in error["message"]
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.json()["error"]["message"], r.text


def test_served_medusa_answers_as_the_stock_server(model_path):
    common = dict(model=model_path, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS)
    with TestClient(stock_create_app(server_settings=ServerSettings(), model_settings=[ModelSettings(**common)])) as c:
        want = answers(c)
    app = server.create_app(ServerSettings(), [server.MedusaModelSettings(medusa_choices="small", **common)])
    import llama_cpp.server.app as stock_app

    llm = stock_app._llama_proxy()  # the loaded model (get_llama_proxy would take the request locks)
    assert isinstance(llm, Llama) and len(llm.medusa_tree) == 8  # the shipped heads, on the tree asked for
    with TestClient(app) as c:
        got = answers(c)
        assert llm.medusa_stats.steps < llm.medusa_stats.tokens  # the last answer took fewer passes than tokens
        refused(c)
        assert text_of(c.post(REQUESTS[0][0], json=REQUESTS[0][1]), REQUESTS[0][1]) == want[0]
    assert got == want and all(len(a) > 40 for a in got)


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


def test_served_models_decode_on_one_thread_whatever_thread_calls(model_path, stock, monkeypatch):
    """The server's models decode on one thread (llama.cpp's OpenMP teams belong to the calling thread), whichever
    pool thread drives them: plain steps, the prompt and tree verifies alike, with stock's output."""
    import llama_cpp.llama_cpp as raw

    from llama_medusa.backbones import decode_thread

    seen, real = [], raw.llama_decode

    def recording(ctx, batch):
        seen.append(threading.get_ident())
        return real(ctx, batch)

    monkeypatch.setattr(raw, "llama_decode", recording)  # stock's paths (LlamaContext.decode)
    monkeypatch.setattr(llama_cpp, "llama_decode", recording)  # the tree verify
    llm = server._Factory(dict(medusa_heads="auto", medusa_choices="small", medusa_lookup=8))(
        model_path, n_ctx=N_CTX, flash_attn=True, verbose=False, **THREADS)
    prompts = ["The three primary colours are", "Q: What is the capital of France?\nA:", "def fibonacci(n):"]
    got = []
    for p in prompts:  # each call from a new thread, as a server's pool does
        with ThreadPoolExecutor(1) as pool:
            got.append(pool.submit(lambda q: llm(q, max_tokens=32, temperature=0)["choices"][0]["text"], p).result())
    streamed = llm.create_completion(prompts[0], max_tokens=32, temperature=0, stream=True)
    with ThreadPoolExecutor(3) as pool:  # a stream's chunks each from whichever thread is free
        chunks = []
        while (c := pool.submit(next, streamed, None).result()) is not None:
            chunks.append(c["choices"][0]["text"])
    assert llm.medusa_stats.steps < llm.medusa_stats.tokens  # the tree ran
    assert len(seen) > 20 and len(set(seen)) == 1 and seen[0] != threading.get_ident()
    assert seen[0] == decode_thread.run(threading.get_ident)
    assert got == [stock(p, max_tokens=32, temperature=0)["choices"][0]["text"] for p in prompts]
    assert "".join(chunks) == got[0]
