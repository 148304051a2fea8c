"""The Zarr v3 activation store: format, writer, reader, split, loader and the store tools."""

from osae.store.format import hook_spec
from osae.store.reader import ActivationStore
from osae.store.writer import StoreWriter

__all__ = ["ActivationStore", "StoreWriter", "hook_spec"]
