"""The .npz reader accepts the zip methods numpy writes and refuses others from the directory, before reading."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from core.data.uploads import UploadRejected, parse_upload

CAP = 1 << 20


def _npz_bytes(method: int) -> bytes:
    entry = io.BytesIO()
    np.save(entry, np.arange(12, dtype=np.float32).reshape(4, 3))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("x.npy", entry.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_stored_and_deflated_entries_are_read(method):
    dataset = parse_upload("a.npz", io.BytesIO(_npz_bytes(method)), None, CAP)
    assert (dataset.rows, dataset.columns, dataset.has_labels) == (4, 3, False)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_zip_methods_are_refused_naming_the_entry(method):
    with pytest.raises(UploadRejected, match=rf"file: entry 'x.npy' .* zip method {method}"):
        parse_upload("a.npz", io.BytesIO(_npz_bytes(method)), None, CAP)
