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
