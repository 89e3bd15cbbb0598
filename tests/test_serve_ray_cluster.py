"""`llama-medusa serve --ray` from the command line, joining a running Ray cluster through RAY_ADDRESS.

A one-node cluster is started with `ray start --head` on this machine; the command runs in its own process, joins
it, serves a replica, and answers as stock llama-cpp-python does. Then the command is stopped and the cluster too.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import llama_cpp  # noqa: F401  (before numpy on some images)
import pytest

pytest.importorskip("ray.serve", reason="the ray extra (ray[serve]) is part of .[test]")
import httpx  # noqa: E402
from conftest import N_CTX  # noqa: E402

from llama_medusa.commands.serve_bench import wait_ready  # noqa: E402

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(RAY is None, reason="the ray command is not installed")
def test_serve_ray_joins_the_cluster_at_ray_address(model_path, tmp_path):
    gcs, http = free_port(), free_port()
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{gcs}", RAY_AUTH_MODE="disabled")  # a throwaway test cluster
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    started = subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=false",
                              f"--temp-dir={temp}"], capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    cmd = [sys.executable, "-c", "from llama_medusa.commands.cli import main; raise SystemExit(main())", "serve",
           "--ray", "--replicas", "1", "--model", model_path, "--n_ctx", str(N_CTX), "--n_threads", "1",
           "--n_threads_batch", "1", "--host", "127.0.0.1", "--port", str(http), "--medusa_choices", "small"]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{http}"
        try:
            wait_ready(url, proc, timeout=180)
        except RuntimeError as e:
            pytest.fail(f"{e}:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        # the replica runs on the cluster's node, holding its one CPU; `ray status` reports usage a few seconds late
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([RAY, "status"], capture_output=True, text=True, env=env, timeout=60).stdout
            if "1.0/1.0 CPU" in status or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert "1.0/1.0 CPU" in status, status
        prompt = "Q: Name three colours of the rainbow.\nA:"
        body = dict(prompt=prompt, max_tokens=32, temperature=0, repeat_penalty=1.0)  # the server defaults to 1.1
        r = httpx.post(url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        s = llama_cpp.Llama(model_path, n_ctx=N_CTX, flash_attn=True, verbose=False, n_threads=1, n_threads_batch=1)
        assert r.json()["choices"][0]["text"] == s(prompt, max_tokens=32, temperature=0)["choices"][0]["text"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
