"""One writer at a time, and never a lock left stuck by a crashed writer.

Local stores use `flock` on a file inside the store: the kernel drops it when the holder dies, whatever
the cause (SIGKILL included). Object stores have no flock, so a remote writer keeps a lease object that it
renews in a background thread; a lease not renewed for REMOTE_LEASE_SECONDS is abandoned and may be taken.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from osae.constants import LOCK_FILE, REMOTE_LEASE_FILE, REMOTE_LEASE_SECONDS
from osae.errors import StoreError, StoreLockedError
from osae.store.core.location import Location, filesystem, join, require_writable


class WriterLock:
    """Context-managed exclusive writer lock on a store location."""

    def __init__(self, loc: Location):
        self.loc = loc
        self._fd: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._token = uuid.uuid4().hex

    def acquire(self) -> WriterLock:
        if self.loc.is_local:
            self._acquire_local()
        else:
            self._acquire_remote()
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join(timeout=5)
            self._renewer = None
            fs = filesystem(self.loc)
            path = join(self.loc, REMOTE_LEASE_FILE)
            if self._read_lease(fs, path).get("token") == self._token:
                fs.rm(path)

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire_local(self) -> None:
        try:
            os.makedirs(self.loc.path, exist_ok=True)
            fd = os.open(os.path.join(self.loc.path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(
                    f"cannot write to {self.loc.display}: {exc.strerror}; choose a writable location"
                ) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreLockedError(
                f"{self.loc.display} is being written by {holder}; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    @staticmethod
    def _read_lease(fs, path: str) -> dict:
        try:
            with fs.open(path, "rb") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"expires": 0}

    def _write_lease(self, fs, path: str) -> None:
        body = {
            "token": self._token,
            "holder": f"pid {os.getpid()} on {socket.gethostname()}",
            "expires": time.time() + REMOTE_LEASE_SECONDS,
        }
        with fs.open(path, "wb") as f:
            f.write(json.dumps(body).encode())

    def _acquire_remote(self) -> None:
        require_writable(
            self.loc
        )  # a lease cannot be written over http(s)://: say "read-only", not NotImplementedError
        fs = filesystem(self.loc)
        path = join(self.loc, REMOTE_LEASE_FILE)
        lease = self._read_lease(fs, path)
        if lease and lease.get("expires", 0) > time.time():
            raise StoreLockedError(
                f"{self.loc.url} is being written by {lease.get('holder', 'another writer')} "
                f"(lease valid for {lease['expires'] - time.time():.0f} s more); wait for it to finish"
            )
        self._write_lease(fs, path)
        # Object stores have no compare-and-swap here: read back to detect a writer that raced us.
        time.sleep(0.05)
        if self._read_lease(fs, path).get("token") != self._token:
            raise StoreLockedError(f"{self.loc.url} was taken by another writer at the same moment; retry")
        self._renewer = threading.Thread(target=self._renew, args=(fs, path), daemon=True)
        self._renewer.start()

    def _renew(self, fs, path: str) -> None:
        while not self._stop.wait(REMOTE_LEASE_SECONDS / 4):
            self._write_lease(fs, path)
