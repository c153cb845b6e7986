"""The sizes of a Parquet file's pages, read from their headers before pyarrow reads any page.

pyarrow decompresses a whole page at a time, whatever the batch size asked for, and reading a row group keeps a page
(and the dictionary) of every column at once; so memory follows the pages, and a 16 KB file can hold a page that
inflates to 512 MiB. The footer's sizes are per column chunk and written by whoever made the file; a page's own sizes
are in its header (a Thrift compact-protocol ``PageHeader`` in front of the page's bytes). So every column chunk is
walked here, header by header over the byte range pyarrow will read, and refused when a page, or the pages a row
group holds at once, are over the caps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from core.data.formats.inspection import UploadRejected

MAX_PAGE_BYTES = 32 * 1024 * 1024  # writers cut pages at about 1 MiB (pyarrow's data_page_size)
MAX_HELD_BYTES = 256 * 1024 * 1024  # every column's dictionary and largest page in a row group
MAX_PAGES = 1_000_000
MAX_PAGE_HEADER_BYTES = 64 * 1024  # a numeric column's page header is tens of bytes
FIRST_READ = 4096
DICTIONARY_PAGE = 2
MAX_DEPTH = 16


def check_pages(fp: BinaryIO, metadata) -> None:
    """Refuse the file (``metadata`` is its pyarrow ``FileMetaData``) if one page would inflate past
    ``MAX_PAGE_BYTES`` or a row group's pages held together past ``MAX_HELD_BYTES``; names the column and size."""
    file_size = fp.seek(0, 2)
    pages = 0
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        held, widest = 0, (0, "")
        for j in range(group.num_columns):
            column = group.column(j)
            name = column.path_in_schema
            dictionary = largest = 0
            for kind, inflated, stored in _pages(fp, *_chunk_range(column, name, i, file_size)):
                pages += 1
                if pages > MAX_PAGES:
                    raise UploadRejected(f"file: more than {MAX_PAGES} Parquet pages (write larger pages)")
                if max(inflated, stored) > MAX_PAGE_BYTES:
                    raise UploadRejected(
                        f"file: column {name!r} has a page of {inflated} bytes uncompressed ({stored} compressed) "
                        f"in row group {i}; a page may hold at most {MAX_PAGE_BYTES} bytes (write smaller pages, "
                        "e.g. pyarrow's data_page_size)"
                    )
                if kind == DICTIONARY_PAGE:
                    dictionary += inflated
                else:
                    largest = max(largest, inflated)
            held += dictionary + largest
            widest = max(widest, (dictionary + largest, name))
        if held > MAX_HELD_BYTES:
            raise UploadRejected(
                f"file: row group {i} holds {held} bytes of pages at once across its {group.num_columns} columns "
                f"(column {widest[1]!r}: {widest[0]}); at most {MAX_HELD_BYTES} (write smaller row groups or pages)"
            )


def _chunk_range(column, name: str, group: int, file_size: int) -> tuple[int, int]:
    """The bytes pyarrow reads for a column chunk: from its dictionary page (or first data page) on, for the
    chunk's compressed size."""
    start = column.data_page_offset
    dictionary = column.dictionary_page_offset if column.has_dictionary_page else None
    if dictionary is not None and 0 < dictionary < start:
        start = dictionary
    end = start + column.total_compressed_size
    if start < 0 or column.total_compressed_size < 0 or end > file_size:
        raise UploadRejected(f"file: not a readable Parquet file (column {name!r}, row group {group}, lies outside it)")
    return start, end


def _pages(fp: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(page type, uncompressed size, compressed size) of each page from ``start`` to ``end``."""
    at = start
    while at < end:
        fp.seek(at)
        want = FIRST_READ
        while True:
            buf = fp.read(want)
            try:
                kind, inflated, stored, length = _page_header(buf)
                break
            except _Short:
                if len(buf) < want:
                    raise UploadRejected(
                        f"file: not a readable Parquet file (it ends in a page header at byte {at})"
                    ) from None
                if want >= MAX_PAGE_HEADER_BYTES:
                    raise UploadRejected(
                        f"file: a Parquet page header at byte {at} is over {MAX_PAGE_HEADER_BYTES} bytes"
                    ) from None
                want = MAX_PAGE_HEADER_BYTES
            except _Malformed as exc:
                raise UploadRejected(f"file: not a readable Parquet file (page header at byte {at}: {exc})") from None
        if inflated < 0 or stored < 0:
            raise UploadRejected(f"file: not a readable Parquet file (page header at byte {at}: a negative size)")
        yield kind, inflated, stored
        at += length + stored


class _Short(Exception):
    """The buffer ended inside the header: read more."""


class _Malformed(Exception):
    """Not a Thrift compact-protocol page header."""


def _page_header(buf: bytes) -> tuple[int, int, int, int]:
    """(type, uncompressed_page_size, compressed_page_size, header length) of the ``PageHeader`` at the start of
    ``buf``: fields 1-3 (i32), every other field skipped."""
    reader = _Compact(buf)
    got: dict[int, int] = {}
    for field, kind in reader.fields():
        if field in (1, 2, 3) and kind == _I32:
            got[field] = reader.zigzag()
        else:
            reader.skip(kind, 1)
    if len(got) != 3:
        raise _Malformed("no page type and sizes")
    return got[1], got[2], got[3], reader.at


_BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT, _UUID = range(1, 14)


class _Compact:
    """Just enough of Thrift's compact protocol to read a struct's integer fields and skip the others."""

    def __init__(self, buf: bytes):
        self.buf, self.at = buf, 0

    def byte(self) -> int:
        if self.at >= len(self.buf):
            raise _Short
        self.at += 1
        return self.buf[self.at - 1]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise _Malformed("a varint over 10 bytes")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip_bytes(self, n: int) -> None:
        if self.at + n > len(self.buf):
            raise _Short
        self.at += n

    def fields(self) -> Iterator[tuple[int, int]]:
        """(field id, type) of each field of a struct, up to its stop byte; the caller reads or skips the value."""
        last = 0
        while b := self.byte():
            last = last + (b >> 4) if b >> 4 else self.zigzag()
            yield last, b & 0x0F

    def skip(self, kind: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Malformed("nested too deeply")
        if kind in (_BOOL_TRUE, _BOOL_FALSE):  # a struct field's boolean is in its type
            return
        if kind in (_LIST, _SET):
            head = self.byte()
            n = self.varint() if head >> 4 == 15 else head >> 4
            for _ in range(n):  # each element takes a byte at least: the buffer bounds the loop
                self._element(head & 0x0F, depth + 1)
        elif kind == _MAP:
            n = self.varint()
            types = self.byte() if n else 0
            for _ in range(n):
                self._element(types >> 4, depth + 1)
                self._element(types & 0x0F, depth + 1)
        elif kind == _STRUCT:
            for _, field_kind in self.fields():
                self.skip(field_kind, depth + 1)
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind in _FIXED:
            self.skip_bytes(_FIXED[kind])
        elif kind == _BINARY:
            self.skip_bytes(self.varint())
        else:
            raise _Malformed(f"Thrift type {kind}")

    def _element(self, kind: int, depth: int) -> None:
        if kind in (_BOOL_TRUE, _BOOL_FALSE):  # a container's boolean takes a byte
            self.skip_bytes(1)
        else:
            self.skip(kind, depth)


_FIXED = {_BYTE: 1, _DOUBLE: 8, _UUID: 16}
