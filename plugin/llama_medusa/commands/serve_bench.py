"""`llama-medusa serve-bench`: a bounded load run over loopback against each way of serving one model.

Setups, one after the other on the same machine and threads in all: stock llama-cpp-python's server, `llama-medusa
serve` alone, then `llama-medusa serve --ray` with each replica count (the threads split between the replicas).
Each setup gets the same greedy chat requests from 1, 4 and 8 closed-loop clients (each sends its next request when
its last is answered), a fixed number of requests per level. Printed per setup and level: requests/s, latency
p50/p95 and generated tokens/s, beside what bounds them here: the machine's streaming read bandwidth, and the model
bytes every replica reads per pass.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

import httpx

PORT = 18080


def load(url: str, prompts: Sequence[str], clients: int, requests: int, max_tokens: int) -> dict:
    """`requests` greedy chat requests from `clients` closed-loop clients; every answer must be 200."""
    latencies, tokens, replicas, errors = [], [], {}, []
    next_i, lock = [0], threading.Lock()

    def client():
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    i, next_i[0] = next_i[0], next_i[0] + 1
                if i >= requests:
                    return
                body = dict(messages=[{"role": "user", "content": prompts[i % len(prompts)]}], max_tokens=max_tokens,
                            temperature=0)
                t0 = time.perf_counter()
                r = c.post("/v1/chat/completions", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    latencies.append(dt)
                    tokens.append(r.json()["usage"]["completion_tokens"])
                    who = r.headers.get("x-llama-medusa-replica", "-")
                    replicas[who] = replicas.get(who, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {requests} requests failed, first: {errors[0]}")
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[18] if len(latencies) > 1 else latencies[0]
    return dict(clients=clients, requests=requests, wall_s=wall, rps=requests / wall, p50_s=statistics.median(latencies),
                p95_s=p95, tokens_per_s=sum(tokens) / wall, per_replica=sorted(replicas.values(), reverse=True))


def wait_ready(url: str, proc: Optional[subprocess.Popen] = None, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it answered")
        try:
            if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} after {timeout} s")


def _process_server(args: List[str], url: str):
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        return proc
    except BaseException:
        proc.kill()
        raise


def run_serve_bench(model: str, heads: Optional[str], threads: int, replicas: Sequence[int], clients: Sequence[int],
                    requests: int, max_tokens: int, n_ctx: int = 2048, log=print) -> dict:
    import ray
    from llama_cpp.server.settings import ServerSettings
    from ray import serve

    from .. import _native
    from ..drafting.autotree import cpu_name
    from .bench import DEFAULT_PROMPTS
    from .serve import MedusaModelSettings
    from .serve_ray import deployment, run

    url = f"http://127.0.0.1:{PORT}"
    common = ["--model", model, "--n_ctx", str(n_ctx), "--flash_attn", "True", "--host", "127.0.0.1",
              "--port", str(PORT)]
    medusa = ["--medusa_heads", heads] if heads else []
    out = dict(machine=dict(cpu=cpu_name(), cores=os.cpu_count(),
                            read_GBps=_native.read_bandwidth(0.5, os.cpu_count(), 1 << 28) / 1e9),
               model=os.path.basename(model), model_bytes=os.path.getsize(model), threads=threads,
               max_tokens=max_tokens, setups=[])

    def measure(name: str, n_replicas: int, per_replica_threads: int):
        for i in range(n_replicas):  # warm: the first request on each replica pays its first-call costs
            load(url, DEFAULT_PROMPTS[i:], n_replicas, n_replicas, 8)
        levels = []
        for c in clients:
            levels.append(load(url, DEFAULT_PROMPTS, c, requests, max_tokens))
            lv = levels[-1]
            log(f"  {name}: {c} clients: {lv['rps']:.2f} req/s, p50 {lv['p50_s']:.2f} s, p95 {lv['p95_s']:.2f} s, "
                f"{lv['tokens_per_s']:.0f} tok/s, per replica {lv['per_replica']}")
        out["setups"].append(dict(setup=name, replicas=n_replicas, threads_per_replica=per_replica_threads,
                                  levels=levels))

    threading_args = ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    for name, args in [("stock llama_cpp.server", ["-m", "llama_cpp.server", *common, *threading_args]),
                       ("llama-medusa serve", ["-c", "from llama_medusa.commands.cli import main; "
                                               "raise SystemExit(main())", "serve", *common, *threading_args,
                                               *medusa])]:
        log(f"{name} ({threads} threads)")
        proc = _process_server(args, url)
        try:
            measure(name, 1, threads)
        finally:
            proc.terminate()
            proc.wait(30)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for n in replicas:
            per = max(threads // n, 1)
            name = f"serve --ray --replicas {n}"
            log(f"{name} ({per} threads each)")
            settings = MedusaModelSettings(model=model, medusa_heads=heads, n_ctx=n_ctx, flash_attn=True,
                                           n_threads=per, n_threads_batch=per, verbose=False)
            run(deployment(ServerSettings(), [settings], n), "127.0.0.1", PORT, blocking=False)
            try:
                wait_ready(url)
                measure(name, n, per)
            finally:
                serve.delete("llama-medusa")
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def format_table(result: dict) -> str:
    m = result["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, streaming read {m['read_GBps']:.1f} GB/s; {result['model']} "
             f"({result['model_bytes'] / 1e6:.0f} MB read per pass), {result['threads']} threads in all, greedy chat, "
             f"max_tokens {result['max_tokens']}",
             "",
             "| setup | threads/replica | clients | req/s | p50 s | p95 s | tok/s | requests per replica |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in result["setups"]:
        for lv in s["levels"]:
            lines.append(f"| {s['setup']} | {s['threads_per_replica']} | {lv['clients']} | {lv['rps']:.2f} | "
                         f"{lv['p50_s']:.2f} | {lv['p95_s']:.2f} | {lv['tokens_per_s']:.0f} | "
                         f"{'/'.join(map(str, lv['per_replica']))} |")
    return "\n".join(lines)


def main(args) -> int:
    from ..default_model import default_model_path
    from ..heads.shipped import shipped_heads_for

    model = args.model or default_model_path()
    heads = args.heads or shipped_heads_for(model, flag="--heads")
    threads = args.threads or os.cpu_count()
    result = run_serve_bench(model, heads, threads, [int(x) for x in args.replicas.split(",")],
                             [int(x) for x in args.clients.split(",")], args.requests, args.max_tokens,
                             log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
