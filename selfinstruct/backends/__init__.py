"""LM backends behind one small interface (`LMBackend.imap`). Heavy ones import lazily."""

from __future__ import annotations

from .base import BackendError, GenerationParams, LMBackend, Prompt, Reply, Request
from .scripted import ScriptedBackend

__all__ = ["BackendError", "GenerationParams", "LMBackend", "Prompt", "Reply", "Request", "ScriptedBackend",
           "make_backend"]


def make_backend(cfg) -> LMBackend:
    """Build the backend a `BackendConfig` names."""
    if cfg.kind == "scripted":
        return ScriptedBackend(cfg.replies, delay_s=cfg.delay_s)
    if cfg.kind == "transformers":
        from .transformers_local import TransformersBackend

        return TransformersBackend(cfg.model, batch_size=cfg.batch_size, dtype=cfg.dtype, device=cfg.device,
                                   threads=cfg.threads)
    if cfg.kind == "openai":
        from .openai_remote import OpenAIBackend

        return OpenAIBackend.from_config(cfg)
    raise BackendError(f"unknown backend kind {cfg.kind!r}; use transformers, openai or scripted")
