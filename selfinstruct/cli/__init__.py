"""The `selfinstruct` command. One module per subcommand; this is the only layer that prints
and exits. Library errors that name their fix (ConfigError, ModelError, ...) are shown
as one line, without a traceback."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError
from ..jsonl import JsonlFormatError
from ..records import TaskFormatError

COMMANDS = ["run", "export", "stats", "finetune", "eval", "ablate"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # basicConfig does nothing where logging is already set up (a notebook, a host program,
    # pytest), which left the root at WARNING and run.log with warnings only: our own
    # loggers pass INFO on regardless.
    logging.getLogger("selfinstruct").setLevel(level)
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "urllib3", "filelock", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="selfinstruct", description="Grow an instruction dataset with Self-Instruct, then LoRA-finetune on it.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}_cmd":
                raise
            continue
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from ..backends.base import BackendError
    from ..models import ModelError
    from ..rundir import RunLockedError

    try:
        return int(args.func(args) or 0)
    except (CliError, ConfigError, TaskFormatError, JsonlFormatError, ModelError, BackendError, RunLockedError,
            FileNotFoundError) as e:
        print(f"selfinstruct: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nselfinstruct: interrupted; everything accepted so far is saved. Run the same command "
              "again to continue.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
