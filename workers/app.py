"""The Celery app's configuration. Messages carry only a job id (JSON); the database holds everything else.

Nothing is built at import time: the API makes an app on its first publish (``workers.publish.Publisher``) and a
worker process makes its own with the task registered (``workers.tasks.worker_app``). Making one creates the
filesystem broker's folders, so importing this module leaves the current directory alone.

Pool: ``solo`` — the job runs in the worker process itself, so that process owns its CUDA context (nothing is
forked after CUDA could have been touched), and a SIGKILL of the worker is a SIGKILL of the job. Run one worker
process per device (or per core budget) to scale out.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.settings import Settings, get_settings


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.resolved_broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": "cpu",
        "task_create_missing_queues": True,
        "broker_connection_timeout": 3,
    }
    if conf["broker_url"].startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
        # The filesystem transport has no broadcast: no remote control, mingle or gossip.
        conf["worker_enable_remote_control"] = False
    else:
        conf["broker_transport_options"] = {
            "visibility_timeout": 3600,
            "socket_connect_timeout": 3,
            "socket_timeout": 5,
        }
        if settings.broker_key_prefix:
            conf["broker_transport_options"]["global_keyprefix"] = settings.broker_key_prefix
        # task events (received, started, succeeded, ...) for `celery flower` and `celery events`
        conf["worker_send_task_events"] = True
    return conf


def make_celery(settings: Settings) -> Celery:
    app = Celery("gradlab")
    app.conf.update(celery_config(settings))
    return app


def __getattr__(name: str) -> Celery:
    """``celery -A workers.app flower|events|inspect``: an app from the environment's settings, made when asked for
    (module attribute lookup, PEP 562), so importing this module still builds nothing."""
    if name == "app":
        return make_celery(get_settings())  # this process's entry point: the celery command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
