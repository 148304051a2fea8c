"""Errors a user can act on. The CLI prints their message as one line and exits 1."""


class OsaeError(Exception):
    """Base class: the message says what was expected, what was found and what to do."""


class StoreError(OsaeError):
    """A store cannot be opened, read or written."""


class StoreFormatError(StoreError):
    """The path is not an osae store, or it has a format this osae cannot read."""


class StoreLockedError(StoreError):
    """Another writer holds the store."""


class StoreMismatchError(StoreError):
    """An append or a read does not match the store (dtype, width, hooks)."""


class CheckpointError(OsaeError):
    """A checkpoint cannot be loaded or does not match."""


class UsageError(OsaeError, ValueError):
    """A setting, argument or input value is wrong (also a ValueError, as config validation raises)."""


class MissingInputError(OsaeError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class RunInterrupted(OsaeError):
    """SIGINT or SIGTERM stopped a run after it wrote a checkpoint; the same command resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for a death by signal
