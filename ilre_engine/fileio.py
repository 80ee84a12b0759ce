"""Durable files: checksums, synced writes, directory fsync and a per-directory writer lock,
shared by every on-disk format ILRe writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import DirectoryError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and flush it to the disk before returning."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    """Flush a file another writer (e.g. safetensors) wrote to the disk."""
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    """Make a rename or an unlink in `directory` durable; a no-op where directories cannot be
    opened (Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a directory
        pass
    finally:
        os.close(descriptor)


def _process_lock(directory: Path) -> threading.Lock:
    key = str(directory.resolve())
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


@contextlib.contextmanager
def exclusive_directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` against other writers, in this process and in
    others: ``flock`` on the directory itself (nothing is created in it, so the lock never
    needs cleaning up). Where ``flock`` is missing (Windows) or the file system refuses it,
    only the writers of this process are serialised. Blocks until the lock is free.
    `DirectoryError` when `directory` cannot be opened (it is gone, or not readable)."""
    with _process_lock(directory):
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        try:
            descriptor = os.open(directory, os.O_RDONLY)
        except OSError as error:
            raise DirectoryError(f"cannot lock {directory}: {error.strerror}") from error
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError:  # pragma: no cover - a file system without flock (some NFS)
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
