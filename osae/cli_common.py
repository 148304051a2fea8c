"""What every typer command shares: one-line errors with exit code 1, logging set up once."""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Callable

import typer

from osae.errors import OsaeError

log = logging.getLogger("osae")

# Exceptions whose message is meant for the user. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (OsaeError,)
# Operating-system failures that are the machine's state, not osae's fault: a full disk, a missing permission.
USER_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
BUG_NOTE = (
    "osae: internal error (the traceback above): this is a bug in osae, please report it with the command you ran"
)


class MainProcessOnly(logging.Filter):
    """In a multi-process run (RANK set by accelerate/torchrun) only rank 0 logs below WARNING, and every
    record names its rank, so N processes do not print N copies of each line."""

    def __init__(self, rank: int, world: int):
        super().__init__()
        self.rank, self.world = rank, world

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_tag = f"[rank {self.rank}] " if self.world > 1 else ""
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(level: str = "INFO") -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(rank_tag)s%(message)s"))
    handler.addFilter(MainProcessOnly(rank, world))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"osae: error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(fn: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and exit 1 (`OSAE_DEBUG=1` shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BrokenPipeError:  # the reader of our output went away (`| head`): not an error of ours
            sys.stderr.close()
            os._exit(0)
        except USER_ERRORS as exc:
            if os.environ.get("OSAE_DEBUG"):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fail(msg, getattr(exc, "exit_code", 1))
        except OSError as exc:
            if os.environ.get("OSAE_DEBUG") or exc.errno not in USER_OS_ERRNOS:
                _report_bug()
                raise
            fail(f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc))
        except KeyboardInterrupt:
            fail("interrupted; committed data is intact and the same command resumes", 130)
        except Exception:
            _report_bug()
            raise

    return wrapper


def _report_bug() -> None:
    """Say, after the traceback Python is about to print, that it is ours to fix."""
    import atexit

    atexit.register(lambda: print(BUG_NOTE, file=sys.stderr))


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))
