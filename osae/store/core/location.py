"""Where a store lives: a local directory or an fsspec URL (s3://, gs://, http(s)://, file://).

Everything that touches a store's bytes goes through `open_location`, so local and remote stores take
the same code path above this module.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
import zarr.storage

from osae.errors import StoreError

log = logging.getLogger(__name__)

REMOTE_WRITABLE = {"s3", "s3a", "gs", "gcs", "memory"}
READ_ONLY_PROTOCOLS = {"http", "https"}


@dataclass(frozen=True)
class Location:
    """A parsed store address. `path` is a local filesystem path for local stores."""

    url: str
    protocol: str
    path: str

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def display(self) -> str:
        return self.path if self.is_local else self.url


def parse_location(url: str | os.PathLike) -> Location:
    text = os.fspath(url)
    if "://" not in text:
        return Location(url=text, protocol="file", path=str(Path(text).expanduser().absolute()))
    protocol, rest = text.split("://", 1)
    protocol = protocol.lower()
    if protocol == "file":
        return Location(url=text, protocol="file", path=str(Path(rest).absolute()))
    return Location(url=text.rstrip("/"), protocol=protocol, path=rest.rstrip("/"))


def storage_options(loc: Location) -> dict:
    """fsspec options for a remote location: OSAE_STORAGE_OPTIONS (JSON) plus AWS_ENDPOINT_URL for S3."""
    opts: dict = {}
    raw = os.environ.get("OSAE_STORAGE_OPTIONS")
    if raw:
        try:
            opts.update(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise StoreError(f"OSAE_STORAGE_OPTIONS is not valid JSON ({exc}); fix or unset it") from None
    if loc.protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts.setdefault("client_kwargs", {}).setdefault("endpoint_url", endpoint)
    return opts


def filesystem(loc: Location):
    """The fsspec filesystem for a location (synchronous API)."""
    if loc.is_local:
        return fsspec.filesystem("file")
    try:
        return fsspec.filesystem(loc.protocol, **storage_options(loc))
    except (ImportError, ValueError) as exc:
        raise StoreError(
            f"cannot open {loc.url}: no filesystem for '{loc.protocol}://' ({exc}); "
            f"s3:// and http(s):// come with osae's own dependencies (s3fs, aiohttp): reinstall osae; other "
            f"protocols need their fsspec package (e.g. gcsfs for gs://)"
        ) from None


def require_writable(loc: Location) -> None:
    """Refuse, before anything is attempted, to write where the protocol cannot write (http(s)://)."""
    if loc.protocol in READ_ONLY_PROTOCOLS:
        raise StoreError(f"{loc.url} is read-only ({loc.protocol}); write to a local path or s3:// instead")


def zarr_store(loc: Location, *, read_only: bool) -> zarr.abc.store.Store:
    """A zarr store object for the location."""
    if loc.is_local:
        return zarr.storage.LocalStore(loc.path, read_only=read_only)
    if not read_only:
        require_writable(loc)
    try:
        return zarr.storage.FsspecStore.from_url(loc.url, storage_options=storage_options(loc), read_only=read_only)
    except (ImportError, ValueError, TypeError) as exc:
        raise StoreError(
            f"cannot open {loc.url} ({exc}); check the URL, and for protocols other than s3:// and http(s):// "
            f"install their fsspec package"
        ) from None


def join(loc: Location, *parts: str) -> str:
    """Path of a file inside the store, for the location's filesystem."""
    base = loc.path if loc.is_local else loc.url
    return "/".join([base.rstrip("/"), *parts])
