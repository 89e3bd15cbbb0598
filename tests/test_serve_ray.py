"""`llama-medusa serve --ray`: two replicas on a local Ray instance, HTTP on loopback.

They answer as stock llama-cpp-python's server (run in-process, same model settings), spread concurrent requests
over both replicas, refuse bad arguments with a 400 and keep serving, and come through one replica's process being
killed mid-load: its requests fail with an error, none hangs, none gets another request's text, and Serve starts a
new replica.
"""
import concurrent.futures as cf
import os
import signal
import socket
import time

import llama_cpp  # noqa: F401  (before numpy on some images)
import pytest

pytest.importorskip("ray.serve", reason="the ray extra (ray[serve]) is part of .[test]")
import httpx  # noqa: E402
import ray  # noqa: E402
from conftest import N_CTX, PROMPTS  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from llama_cpp.server.app import create_app as stock_create_app  # noqa: E402
from llama_cpp.server.settings import ModelSettings, ServerSettings  # noqa: E402
from ray import serve  # noqa: E402
from test_server import answers, refused, text_of  # noqa: E402

from llama_medusa.commands import serve_ray  # noqa: E402
from llama_medusa.commands.serve import MedusaModelSettings  # noqa: E402

COMMON = dict(n_ctx=N_CTX, flash_attn=True, verbose=False, n_threads=1, n_threads_batch=1)  # one core per replica
TOPICS = ["a lighthouse keeper", "a city of bees", "the first train to the moon", "a clockmaker's apprentice",
          "a forest that walks", "a robot learning to paint", "the last library", "a river that flows uphill"]
LOAD = [("/v1/chat/completions", dict(messages=[{"role": "user", "content": p}], max_tokens=128, temperature=0))
        for p in PROMPTS + [f"Tell a short story about {t}." for t in TOPICS[:5]]]
HEADER = serve_ray.REPLICA_HEADER.decode()


def replica_pids():
    """The replicas' processes (Ray names each replica's process after its deployment)."""
    pids = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::ServeReplica:llama-medusa"):
                    pids.append(int(p))
        except OSError:
            pass
    return sorted(pids)


def post(url, route, body, timeout=120):
    """(replica, text) of one answered request, or (None, the error) of a failed one."""
    try:
        r = httpx.post(url + route, json=body, timeout=timeout)
    except httpx.HTTPError as e:
        return None, repr(e)
    if r.status_code != 200:
        return None, f"{r.status_code} {r.text[:200]}"
    return r.headers[HEADER], text_of(r, body)


def concurrently(url, requests):
    with cf.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda rb: post(url, *rb), requests))


def wait_for_replicas(n, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        app = serve.status().applications.get("llama-medusa")
        if app and app.status == "RUNNING" and app.deployments["llama-medusa"].replica_states.get("RUNNING") == n:
            return
        time.sleep(0.5)
    raise AssertionError(f"{n} replicas not running after {timeout} s: {serve.status()}")


@pytest.fixture(scope="module")
def stock(model_path):
    """Stock llama-cpp-python's server's answers to REQUESTS and LOAD, with the replicas' model settings."""
    app = stock_create_app(server_settings=ServerSettings(), model_settings=[ModelSettings(model=model_path, **COMMON)])
    with TestClient(app) as c:
        return answers(c), [text_of(c.post(route, json=body), body) for route, body in LOAD]


@pytest.fixture(scope="module")
def url(model_path):
    if os.cpu_count() < 2:
        pytest.skip("two one-thread replicas need two CPUs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        app = serve_ray.deployment(ServerSettings(), [MedusaModelSettings(model=model_path, **COMMON)], replicas=2)
        serve_ray.run(app, "127.0.0.1", port, blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_replicas_answer_as_the_stock_server(url, stock):
    with httpx.Client(base_url=url, timeout=120) as c:
        assert answers(c) == stock[0]  # completion, chat, streamed chat
        models = c.get("/v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"].endswith(".gguf")


def test_concurrent_requests_spread_over_both_replicas(url, stock):
    got = concurrently(url, LOAD)
    assert [text for _, text in got] == stock[1]
    assert len({replica for replica, _ in got}) == 2, got


def test_bad_arguments_get_400_and_the_replicas_keep_serving(url, stock):
    with httpx.Client(base_url=url, timeout=120) as c:
        for _ in range(2):  # once on each replica, most likely; either way both must answer next
            refused(c)
    got = concurrently(url, LOAD[:4])
    assert [text for _, text in got] == stock[1][:4] and len({replica for replica, _ in got}) == 2


def test_the_load_run_counts_what_it_sent(url):
    from llama_medusa.commands.serve_bench import format_table, load

    lv = load(url, PROMPTS, clients=4, requests=6, max_tokens=8)
    assert lv["requests"] == 6 and sum(lv["per_replica"]) == 6 and len(lv["per_replica"]) == 2
    assert 0 < lv["p50_s"] <= lv["p95_s"] <= lv["wall_s"] and lv["rps"] == pytest.approx(6 / lv["wall_s"])
    table = format_table(dict(machine=dict(cpu="cpu", cores=2, read_GBps=1.0), model="m.gguf", model_bytes=1e8,
                              threads=2, max_tokens=8, setups=[dict(setup="x", threads_per_replica=1, levels=[lv])]))
    assert "| x | 1 | 4 |" in table


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the replicas' processes in /proc")
def test_a_killed_replica_fails_its_requests_and_is_replaced(url, stock):
    wait_for_replicas(2)
    before = replica_pids()
    assert len(before) == 2
    with cf.ThreadPoolExecutor(len(LOAD)) as pool:
        futures = [pool.submit(post, url, route, body) for route, body in LOAD]
        time.sleep(0.5)  # both replicas busy: each takes one request at a time, eight are queued
        os.kill(before[0], signal.SIGKILL)
        got = [f.result(timeout=180) for f in futures]  # every request ends: answered or failed, none hangs
    failed = [text for replica, text in got if replica is None]
    assert 1 <= len(failed) < len(LOAD), got  # the killed replica's request failed; the rest were answered
    for (replica, text), want in zip(got, stock[1]):
        assert replica is None or text == want  # nobody got another request's text
    wait_for_replicas(2)
    after = replica_pids()
    assert before[0] not in after and before[1] in after and len(after) == 2
    got = concurrently(url, LOAD[:4])
    assert [text for _, text in got] == stock[1][:4] and len({replica for replica, _ in got}) == 2


def test_bad_settings_are_refused_before_ray_starts(model_path, tmp_path, capsys):
    from llama_medusa.commands.cli import main

    assert main(["serve", "--ray", "--replicas", "0", "--model", model_path]) == 2
    assert "--replicas must be at least 1, not 0" in capsys.readouterr().err
    assert main(["serve", "--ray", "--model", str(tmp_path / "missing.gguf")]) == 2
    assert "model file not found" in capsys.readouterr().err
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="no heads ship with llama-medusa for other.gguf"):
        serve_ray.build_app({"model": str(other), "replicas": "2"})
    app = serve_ray.build_app({"model": model_path, "replicas": "2", "n_threads": "1"})  # `serve run`'s builder
    assert type(app).__name__ == "Application"
