"""`llama-medusa serve --ray`: replicas of the OpenAI-compatible server (commands/serve.py) on Ray Serve.

Each replica is one Ray actor process running the very app `llama-medusa serve` runs (llama_cpp.server's routes
over a llama_medusa.Llama), built inside the replica from the same settings, so replicas share nothing but the
model files; each measures or reads its own cost curve (cached per machine, as in one process). Routing, queueing,
health checks and restarts are Ray Serve's. One llama_medusa.Llama answers one request at a time
(llama_cpp.server holds a lock around it), so a replica takes one request at a time
(max_ongoing_requests=1) and Serve's router queues the rest and hands each to the next free replica.

Run it from the command line, or as a Ray Serve application (`serve run` / a `serve deploy` config) through its
builder: `serve run llama_medusa.commands.serve_ray:build_app replicas=2 n_threads=1`.

Needs the ray extra: pip install "llama-medusa[ray]".
"""
from __future__ import annotations

import os
from typing import List, Optional

try:
    from ray import serve
except ImportError as e:
    raise ImportError(f"llama-medusa serve --ray needs Ray Serve ({e}): pip install 'llama-medusa[ray]'") from e

from llama_cpp.server.settings import ServerSettings

from .serve import MedusaModelSettings, create_app, medusa_arguments

REPLICA_HEADER = b"x-llama-medusa-replica"  # which replica answered: for logs and for checking the spread


class _ReplicaHeader:
    """ASGI middleware that names the answering replica in every HTTP response."""

    def __init__(self, app, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)

        await self.app(scope, receive, tagged)


@serve.ingress()
class MedusaReplica:
    """One replica: loads the models named by the settings (dicts, as they travel between processes)."""

    def __init__(self, server_settings: dict, model_settings: List[dict]):
        # not `self.app`: Serve's ingress wrapper defines that name
        self.medusa_app = create_app(ServerSettings.model_validate(server_settings),
                                     [MedusaModelSettings.model_validate(m) for m in model_settings])
        self.medusa_app.add_middleware(_ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)

    def __serve_build_asgi_app__(self):
        return self.medusa_app


def deployment(server_settings: ServerSettings, model_settings: List[MedusaModelSettings], replicas: int = 1):
    """The bound Ray Serve application: `replicas` copies, each reserving the CPUs its models' threads use."""
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, not {replicas}")
    for s in model_settings:  # said here, once, rather than by every replica failing to start
        if s.model and not os.path.exists(s.model):
            raise ValueError(f"model file not found: {s.model}")
        medusa_arguments(s)
    cpus = max(max(s.n_threads, s.n_threads_batch) for s in model_settings)
    return serve.deployment(MedusaReplica, name="llama-medusa", num_replicas=replicas, max_ongoing_requests=1,
                            ray_actor_options={"num_cpus": cpus}).bind(
        server_settings.model_dump(), [s.model_dump() for s in model_settings])


def build_app(args: dict):
    """Ray Serve's application builder (`serve run ...:build_app key=value ...`): model settings by name, plus
    `replicas`."""
    args = dict(args)
    replicas = int(args.pop("replicas", 1))
    return deployment(ServerSettings(), [MedusaModelSettings.model_validate(args)], replicas)


def run(app, host: str, port: int, blocking: bool = True, address: Optional[str] = None) -> None:
    """Start the replicas of `app` (deployment()): on the Ray cluster at RAY_ADDRESS when set, else on a one-machine
    Ray started here (no dashboard). Ray Serve's proxy serves HTTP on host:port."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        pass
    elif address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name="llama-medusa", route_prefix="/", blocking=blocking)
