"""Celery side of gradlab: the app, the run_job task, the DB-backed run context and the sweeper."""
