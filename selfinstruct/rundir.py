"""The run directory, `outputs/<name>/`, and the rules for resuming into it.

    config.yaml     the resolved config (no secrets: keys are only ever read from the environment)
    pool.jsonl      accepted machine tasks, append-only, flushed every round
    rejected.jsonl  every parse failure and dropped candidate, with its reason and raw text
    stats.json      counters, rewritten atomically every round
    run.log         the log
    .lock           held while a process writes here, so two runs cannot interleave

A restart with the same config continues. A config whose fingerprint differs (anything
but the fields marked resume_safe, e.g. generation.target) is refused unless forced.
"""

from __future__ import annotations

import fcntl
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, PipelineConfig, config_hash, diff_fingerprints, fingerprint, to_dict

log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    pass


@dataclass
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def pool(self) -> Path:
        return self.path / "pool.jsonl"

    @property
    def rejected(self) -> Path:
        return self.path / "rejected.jsonl"

    @property
    def stats(self) -> Path:
        return self.path / "stats.json"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    @property
    def fingerprint(self) -> Path:
        return self.path / ".fingerprint.yaml"

    def exists(self) -> bool:
        return self.config.exists()

    def lock(self):
        """Take the run's lock for the life of the returned file object."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = (self.path / ".lock").open("w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.close()
            raise RunLockedError(f"{self.path} is in use by another selfinstruct process; "
                                 "wait for it to finish or stop it first") from e
        return f

    def prepare(self, cfg: PipelineConfig, force: bool = False) -> bool:
        """Write or check the config. Returns True when resuming an existing run."""
        self.path.mkdir(parents=True, exist_ok=True)
        new_fp = fingerprint(cfg)
        resuming = self.fingerprint.exists()
        if resuming:
            old_fp = yaml.safe_load(self.fingerprint.read_text(encoding="utf-8")) or {}
            changes = diff_fingerprints(old_fp, new_fp)
            if changes and not force:
                raise ConfigError(
                    f"{self.path} was started with a different config; resuming would mix two "
                    "pools. Changed:\n  " + "\n  ".join(changes) +
                    "\nUse another `name`, restore these settings, or pass --force to continue anyway.")
            if changes:
                log.warning("continuing %s with a changed config (--force): %s", self.path, "; ".join(changes))
        self.config.write_text(
            f"# resolved config; fingerprint {config_hash(cfg)}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False),
            encoding="utf-8")
        self.fingerprint.write_text(yaml.safe_dump(new_fp, sort_keys=True), encoding="utf-8")
        return resuming
