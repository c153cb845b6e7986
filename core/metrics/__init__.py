"""Metric series of jobs: ingest, pages, downsampled reads over the stored rollup, study bands."""
