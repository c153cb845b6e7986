"""Where bytes live: datasets, uploaded models' weights and job artifacts (the database keeps only their metadata)."""

from core.blobs.store import (
    BlobInfo,
    BlobStore,
    BlobTooLarge,
    DirectoryStore,
    S3Store,
    blob_store,
    open_store,
)

__all__ = ["BlobInfo", "BlobStore", "BlobTooLarge", "DirectoryStore", "S3Store", "blob_store", "open_store"]
