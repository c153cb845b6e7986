"""Celery side of gradlab: the app, its tasks (run a job, validate a dataset), the DB-backed run context, the
process's state, presence and the sweeper."""
