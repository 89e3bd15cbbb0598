"""`llama-medusa serve`: llama-cpp-python's OpenAI-compatible server (llama_cpp.server) with Medusa heads.

Routes, streaming, chat formats, API keys and multi-model config files are llama_cpp.server's own code. What
changes: its model settings gain medusa_heads / medusa_choices / medusa_lookup (command line, environment or a
config file's models), flash attention defaults to on (greedy identity with stock needs it on both sides), a model
left out is the embedded default, and every model it loads is a llama_medusa.Llama. llama_cpp.server builds its
models through the name `llama_cpp.Llama` inside llama_cpp.server.model; that one name is pointed, while a model
loads, at a factory adding the model's medusa_* settings, so the rest of its 150-line loader is not copied here.

Needs the server extra: pip install "llama-medusa[server]".
"""
from __future__ import annotations

import json
import os
import sys
import types
from typing import List, Optional

try:
    import llama_cpp
    import llama_cpp.server.app as _app
    import llama_cpp.server.model as _model
    from fastapi.responses import JSONResponse
    from llama_cpp.server.settings import ConfigFileSettings, ModelSettings, ServerSettings
    from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
    from pydantic import Field, ValidationError
except ImportError as e:  # fastapi, uvicorn, sse-starlette, pydantic-settings are llama-cpp-python's server extra
    raise ImportError(f"llama-medusa serve needs llama-cpp-python's server extra ({e}): "
                      "pip install 'llama-medusa[server]'") from e

from ..backbones import decode_thread
from ..llama import Llama


class MedusaModelSettings(ModelSettings):
    model: str = Field(default="", description="GGUF model path (default: the embedded SmolLM2-135M-Instruct).")
    flash_attn: bool = Field(default=True, description="Flash attention (on: Medusa's output equals stock's).")
    medusa_heads: Optional[str] = Field(
        default=None, description="Heads file (default: the heads that ship for the model, if any).")
    medusa_choices: str = Field(
        default="auto", description='Tree: auto, small, mc_sim_7b_63, chain-N, or a JSON list of rank paths.')
    medusa_lookup: int = Field(default=8, description="Most tokens of the lookup branch per step (0: heads alone).")


class MedusaSettings(ServerSettings, MedusaModelSettings):
    pass


class MedusaConfigFileSettings(ConfigFileSettings):
    models: List[MedusaModelSettings] = Field(default=[], description="Model configs")


def medusa_arguments(settings: MedusaModelSettings) -> dict:
    """The llama_medusa.Llama arguments of one model's settings, with the shipped heads when none are named."""
    from ..default_model import default_model_path
    from ..heads.shipped import shipped_heads_for

    heads = settings.medusa_heads
    if heads is None:
        heads = shipped_heads_for(settings.model or default_model_path(), flag="--medusa_heads")
    choices = settings.medusa_choices
    if choices.lstrip().startswith("["):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError as e:
            raise ValueError(f"medusa_choices is not a JSON list of rank paths: {e}") from e
    return dict(medusa_heads=heads, medusa_choices=choices, medusa_lookup=settings.medusa_lookup)


class _Factory:
    """Stands in for llama_cpp.Llama while llama_cpp.server loads one model: the same call, plus medusa_*. The
    model is built, and later decodes, on one thread (backbones/decode_thread.py): llama_cpp.server drives it from
    whichever pool thread is free, and llama.cpp's OpenMP teams slow down once several threads have decoded."""

    def __init__(self, medusa: dict):
        self.medusa = medusa

    def __call__(self, *args, **kwargs):
        return decode_thread.run(lambda: decode_thread.pin(Llama(*args, **kwargs, **self.medusa)))

    def from_pretrained(self, *args, **kwargs):
        return decode_thread.run(lambda: decode_thread.pin(Llama.from_pretrained(*args, **kwargs, **self.medusa)))


class MedusaProxy(_model.LlamaProxy):
    @staticmethod
    def load_llama_from_model_settings(settings: ModelSettings) -> Llama:
        if not isinstance(settings, MedusaModelSettings):
            settings = MedusaModelSettings.model_validate(settings.model_dump())
        shim = types.ModuleType("llama_cpp")
        shim.__dict__.update(vars(llama_cpp))
        shim.Llama = _Factory(medusa_arguments(settings))
        _model.llama_cpp = shim  # the loader runs under the server's model lock: one load at a time
        try:
            return _model.LlamaProxy.load_llama_from_model_settings(settings)
        finally:
            _model.llama_cpp = llama_cpp


BODIES = {"/v1/completions": CreateCompletionRequest, "/v1/engines/copilot-codex/completions": CreateCompletionRequest,
          "/v1/chat/completions": CreateChatCompletionRequest, "/v1/embeddings": CreateEmbeddingRequest}


class RefuseInvalidBodies:
    """ASGI middleware: a request body that is not valid JSON or fails the route's own request model is answered
    400, invalid_request_error, with the fields and what is wrong, as OpenAI's API answers it. llama_cpp.server's
    route handler catches every exception, these included, and answers 500 with a traceback on stderr."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        model = BODIES.get(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if model is None:
            return await self.app(scope, receive, send)
        chunks, message = [], {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body arrived
                return
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        try:
            model.model_validate_json(body)
        except ValidationError as e:
            fields = [".".join(str(x) for x in err["loc"]) or "body" for err in e.errors()]
            error = dict(message="; ".join(f"{f}: {err['msg']}" for f, err in zip(fields, e.errors())),
                         type="invalid_request_error", param=fields[0], code=None)
            return await JSONResponse({"error": error}, status_code=400)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_app(server_settings: Optional[ServerSettings] = None,
               model_settings: Optional[List[MedusaModelSettings]] = None):
    """llama_cpp.server.app.create_app whose models are llama_medusa.Llama (the default model when none given)."""
    from ..default_model import default_model_path

    server_settings = server_settings or ServerSettings()
    model_settings = model_settings or [MedusaModelSettings()]
    for s in model_settings:
        if not s.model:
            s.model = default_model_path()
    saved, config_file = _app.LlamaProxy, os.environ.pop("CONFIG_FILE", None)
    _app.LlamaProxy = MedusaProxy  # create_app builds its proxy through this name, once
    try:  # without CONFIG_FILE: stock's create_app would re-read it as its own settings, dropping medusa_*
        app = _app.create_app(server_settings=server_settings, model_settings=model_settings)
    finally:
        _app.LlamaProxy = saved
        if config_file is not None:
            os.environ["CONFIG_FILE"] = config_file
    app.add_middleware(RefuseInvalidBodies)
    return app


def main(argv=None) -> int:
    """llama_cpp.server's command line (every flag of `python -m llama_cpp.server`) with the medusa_* ones."""
    import argparse

    import uvicorn
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args

    parser = argparse.ArgumentParser(prog="llama-medusa serve",
                                     description="llama-cpp-python's OpenAI-compatible server with Medusa heads")
    add_args_from_model(parser, MedusaSettings)
    parser.add_argument("--config_file", type=str, help="Path to a config file to load (JSON or YAML).")
    parser.add_argument("--ray", action="store_true",
                        help="serve replicas on Ray Serve: the Ray cluster at RAY_ADDRESS, else a local one "
                             "(needs llama-medusa[ray])")
    parser.add_argument("--replicas", type=int, default=1, help="with --ray: how many replicas (default 1)")
    args = parser.parse_args(argv)
    try:
        config_file = os.environ.get("CONFIG_FILE", args.config_file)
        if config_file:
            if not os.path.exists(config_file):
                raise ValueError(f"Config file {config_file} not found!")
            with open(config_file, "rb") as f:
                if config_file.endswith((".yaml", ".yml")):
                    import yaml

                    config = MedusaConfigFileSettings.model_validate(yaml.safe_load(f))
                else:
                    config = MedusaConfigFileSettings.model_validate_json(f.read())
            server_settings = ServerSettings.model_validate(config)  # as llama_cpp.server does
            model_settings = config.models
        else:
            server_settings = parse_model_from_args(ServerSettings, args)
            model_settings = [parse_model_from_args(MedusaModelSettings, args)]
        if args.ray:
            from .serve_ray import deployment, run

            app = deployment(server_settings, model_settings, args.replicas)  # bad settings said before Ray starts
        else:
            app = create_app(server_settings, model_settings)
    except (ValueError, OSError, ImportError) as e:
        print(f"llama-medusa serve: error: {e}", file=sys.stderr)
        return 2
    host, port = os.getenv("HOST", server_settings.host), int(os.getenv("PORT", server_settings.port))
    if args.ray:
        run(app, host, port)
        return 0
    uvicorn.run(app, host=host, port=port, ssl_keyfile=server_settings.ssl_keyfile, ssl_certfile=server_settings.ssl_certfile)
    return 0
