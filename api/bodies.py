"""A request body streamed to a blob store that writes in a worker thread: blocks of about a MiB, whatever the
network's reads, pulled one thread hop per block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio.from_thread
from starlette.requests import ClientDisconnect, Request

from api.limits import BodyTooLarge
from core.blobs.store import CHUNK, BlobTooLarge


async def blocks(request: Request) -> AsyncIterator[bytes]:
    """The request body in blocks of about a MiB (one thread hop per block, not per network read). When the client
    goes away mid-body, what arrived is handed on before ``ClientDisconnect``: a resumable upload keeps it. A body past
    the route's cap (``api.limits``) ends as ``BlobTooLarge``, which a store answers by keeping none of it."""
    buf = bytearray()
    try:
        async for piece in request.stream():
            buf += piece
            if len(buf) >= CHUNK:
                yield bytes(buf)
                buf.clear()
    except ClientDisconnect:
        if buf:
            yield bytes(buf)
        raise
    except BodyTooLarge as exc:  # past the route's body cap: the store drops this body whole, as past its own cap
        raise BlobTooLarge(exc.detail.removeprefix("body: ")) from None
    if buf:
        yield bytes(buf)


def pull(source: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The async body as a plain iterator, for a store writing in a worker thread."""

    async def following() -> bytes:
        return await source.__anext__()

    while True:
        try:
            yield anyio.from_thread.run(following)
        except StopAsyncIteration:
            return
