"""A blob store chosen by URL: ``file:///dir`` (a local or shared directory) or ``s3://bucket/prefix`` (s3fs).

A write is all or nothing: the directory store writes a temporary file beside the target, fsyncs it and renames it
over the key; S3 makes an object visible only when its (multipart) upload completes, and an upload that fails is
aborted. A writer that dies mid-write therefore leaves at most a stray temporary (``.tmp-*``, never read as a blob),
and a reader sees either the old bytes or the new ones. The size and SHA-256 are computed while the bytes stream by.

A *partial* object is a resumable upload in progress, appended to at a given offset and never read as a blob until
``finish_partial`` makes it one. Its size is the bytes received, whoever received them: the directory store appends
to one file (a request cut off mid-way keeps what arrived), S3 keeps each appended chunk as an object and joins them
by a server-side multipart copy (a chunk cut off mid-way is dropped whole, and every chunk but the last must be at
least ``min_chunk_bytes``, S3's smallest part).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

CHUNK = 1024 * 1024
_KEY = re.compile(r"[A-Za-z0-9_.%=-]+(/[A-Za-z0-9_.%=-]+)*")


@dataclass(frozen=True)
class BlobInfo:
    size: int
    sha256: str


class BlobTooLarge(ValueError):
    """The stream ran past the writer's cap; nothing was stored."""


class OffsetMismatch(ValueError):
    """An append did not start where the partial object ends (``received``), or another append holds it."""

    def __init__(self, message: str, received: int):
        super().__init__(message)
        self.received = received


class ChunkTooSmall(ValueError):
    """A chunk that is not the last one is below the store's ``min_chunk_bytes``; it was not kept."""


class BlobStore(Protocol):
    url: str
    min_chunk_bytes: int

    def put(self, key: str, source: BinaryIO | Iterable[bytes], max_bytes: int | None = None) -> BlobInfo: ...
    def open(self, key: str) -> BinaryIO: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def local_path(self, key: str) -> Path | None: ...
    def partial_size(self, key: str) -> int: ...
    def append_partial(self, key: str, offset: int, source: BinaryIO | Iterable[bytes], total: int) -> int: ...
    def finish_partial(self, key: str, target: str) -> None: ...
    def delete_partial(self, key: str) -> None: ...


def check_key(key: str) -> str:
    """Keys are made by gradlab, never by a user; this guards against a slip that would leave the store's root."""
    if not _KEY.fullmatch(key) or any(part in (".", "..") or part.startswith(".tmp-") for part in key.split("/")):
        raise ValueError(f"bad blob key {key!r}")
    return key


def _chunks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(source, "read"):
        while chunk := source.read(CHUNK):
            yield chunk
    else:
        yield from (c for c in source if c)


def _copy(source: BinaryIO | Iterable[bytes], sink: BinaryIO, max_bytes: int | None) -> BlobInfo:
    digest, size = hashlib.sha256(), 0
    for chunk in _chunks(source):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BlobTooLarge(f"over the cap of {max_bytes} bytes")
        digest.update(chunk)
        sink.write(chunk)
    return BlobInfo(size=size, sha256=digest.hexdigest())


def iter_blob(store: BlobStore, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """A blob's bytes in chunks (a streamed HTTP response)."""
    with store.open(key) as fh:
        while block := fh.read(chunk):
            yield block


def read_blob(store: BlobStore, key: str) -> bytes:
    with store.open(key) as fh:
        return fh.read()


class DirectoryStore:
    """Blobs as files under one directory (the data dir, or a volume every API and worker container mounts)."""

    min_chunk_bytes = 1

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: BinaryIO | Iterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as sink:
                info = _copy(source, sink, max_bytes)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a concurrent delete_prefix may have removed it
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return info

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path | None:
        """The file itself, so a worker can memory-map a dataset instead of reading it."""
        return self._path(key)

    def partial_size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def append_partial(self, key: str, offset: int, source: BinaryIO | Iterable[bytes], total: int) -> int:
        """Append at ``offset`` (the bytes received so far), never past ``total``; returns the new size. What
        arrived before the source failed is kept and fsynced, so the client resumes from there; a source that runs
        past a cap (``BlobTooLarge``) is dropped whole."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as sink:
            try:
                fcntl.flock(sink.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
            except BlockingIOError:
                raise OffsetMismatch("another request is appending to this upload", self.partial_size(key)) from None
            size = sink.tell()
            if size != offset:
                raise OffsetMismatch(f"the upload holds {size} bytes, not {offset}", size)
            try:
                for chunk in _chunks(source):
                    if size + len(chunk) > total:
                        raise BlobTooLarge(f"past the declared size of {total} bytes")
                    sink.write(chunk)
                    size += len(chunk)
            except BlobTooLarge:
                sink.truncate(offset)  # a body past a cap is dropped whole, as on S3
                raise
            finally:
                sink.flush()
                os.fsync(sink.fileno())
        return size

    def finish_partial(self, key: str, target: str) -> None:
        path, dest = self._path(key), self._path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete_partial(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sweep_temporaries(self, older_than_s: float) -> int:
        """Remove temporaries that writers which died left behind; returns how many."""
        cutoff, removed = time.time() - older_than_s, 0
        for tmp in self.root.rglob(".tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


class S3Store:
    """Blobs as objects under ``s3://bucket/prefix`` through s3fs (credentials from the usual AWS variables)."""

    min_chunk_bytes = 5 * CHUNK  # S3's smallest multipart part (all but the last)

    def __init__(self, url: str, endpoint_url: str | None = None):
        import s3fs  # type: ignore[import-untyped]  # loaded only where a deployment uses S3

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"blob URL {url!r} names no bucket")
        self.url = url
        self.base = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
        self.fs = s3fs.S3FileSystem(endpoint_url=endpoint_url, use_listings_cache=False)

    def _path(self, key: str) -> str:
        return f"{self.base}/{check_key(key)}"

    def put(self, key: str, source: BinaryIO | Iterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        sink = self.fs.open(self._path(key), "wb", block_size=16 * CHUNK)
        try:
            info = _copy(source, sink, max_bytes)
        except BaseException:
            sink.discard()  # aborts the multipart upload: no object, no parts left behind
            sink.closed = True  # so that collecting the file does not try to finish what was discarded
            raise
        sink.close()  # completes the upload: the object appears whole
        return info

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self._path(key), "rb", block_size=4 * CHUNK, cache_type="readahead")

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def exists(self, key: str) -> bool:
        return self.fs.isfile(self._path(key))

    def local_path(self, key: str) -> Path | None:
        return None

    def _chunk_sizes(self, key: str) -> list[tuple[str, int]]:
        """(path, size) of a partial object's chunks, in order (named by their zero-padded offsets)."""
        try:
            found = self.fs.ls(self._path(key), detail=True)
        except FileNotFoundError:
            return []
        return sorted((f["name"], int(f["size"])) for f in found if f.get("type") == "file")

    def partial_size(self, key: str) -> int:
        return sum(size for _, size in self._chunk_sizes(key))

    def append_partial(self, key: str, offset: int, source: BinaryIO | Iterable[bytes], total: int) -> int:
        """Store the source as the chunk at ``offset``; all or nothing (an interrupted chunk leaves no object)."""
        size = self.partial_size(key)
        if size != offset:
            raise OffsetMismatch(f"the upload holds {size} bytes, not {offset}", size)
        chunk_key = f"{key}/{offset:020d}"
        try:
            info = self.put(chunk_key, source, max_bytes=total - offset)
        except BlobTooLarge:
            raise BlobTooLarge(f"past the declared size of {total} bytes") from None
        if info.size < self.min_chunk_bytes and offset + info.size < total:
            self.delete(chunk_key)
            raise ChunkTooSmall(f"every chunk but the last must hold at least {self.min_chunk_bytes} bytes on S3")
        return offset + info.size

    def finish_partial(self, key: str, target: str) -> None:
        """Join the chunks into the target object by a server-side multipart copy (no bytes pass through here)."""
        chunks = [path for path, _ in self._chunk_sizes(key)]
        if len(chunks) == 1:
            self.fs.copy(chunks[0], self._path(target))
        elif chunks:
            self.fs.merge(self._path(target), chunks)
        else:
            self.put(target, [b""])
        self.delete_partial(key)

    def delete_partial(self, key: str) -> None:
        self.delete_prefix(key)


def open_store(url: str, s3_endpoint_url: str | None = None) -> BlobStore:
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return DirectoryStore(urlsplit(url).path)
    if scheme == "s3":
        return S3Store(url, endpoint_url=s3_endpoint_url)
    raise ValueError(f"blob URL {url!r}: use file:///dir or s3://bucket/prefix")


@lru_cache(maxsize=8)
def _cached(url: str, s3_endpoint_url: str | None) -> BlobStore:
    return open_store(url, s3_endpoint_url)


def blob_store(settings) -> BlobStore:
    """The store the settings name, one per process (an S3 client keeps its connection pool)."""
    return _cached(settings.resolved_blob_url, settings.blob_s3_endpoint_url)
