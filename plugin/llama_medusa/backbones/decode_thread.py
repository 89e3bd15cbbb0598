"""One thread for every llama_decode of the models a server drives.

llama.cpp's CPU backend runs each graph on an OpenMP team that belongs to the thread calling llama_decode. A server
drives its model from whichever thread of its pool is free (llama_cpp.server: anyio's worker threads, a different
one per request or per streamed chunk), so each of those threads gets its own team of n_threads. Once the teams
together outnumber the cores, libgomp stops spinning between parallel regions and every graph waits for its threads
to wake. Measured on the 2-vCPU Ice Lake VM (SmolLM2 Q4_1, 2 threads, 2026-12-07): 89 tok/s while one thread
decodes, 35-40 tok/s once a second thread has decoded, 86-92 tok/s whatever the calling thread when every decode
runs here. The server builds its models on this thread and routes their decodes to it (pin).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_executor = None
_ident = None


def _remember() -> None:
    global _ident
    _ident = threading.get_ident()


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) on the decode thread, waiting for it (directly when called there)."""
    global _executor
    if threading.get_ident() == _ident:
        return fn(*args, **kwargs)
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="llama-decode", initializer=_remember)
    return _executor.submit(fn, *args, **kwargs).result()


def pin(llm):
    """Every later llama_decode of this llama_medusa.Llama on the decode thread: stock's paths (eval, embed) and the
    tree verify alike. Build the model through run() too, so its first decodes (auto's cost curve) run there as well.
    A backbone that decodes without llama.cpp (the native I2_S engine) is left as it is."""
    route = getattr(llm.backbone, "run_decodes_on", None)
    if route is not None:
        route(run)
    return llm
