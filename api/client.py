"""A Python client for the gradlab HTTP API: typed results, paging done for you, and waiting on live events.

    from api.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as gl:
        job = gl.submit(gl.kind("embedding_dim").example)
        done = gl.wait(job.id, timeout=600)
        print(done.status, done.result)

Every HTTP error raises ``ApiError`` carrying the server's problem+json (status, title, detail, field errors);
an unreachable server raises its subclass ``ApiUnreachable``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RECONNECTS = 5  # consecutive failed event-stream connections before giving up


class ApiError(Exception):
    """An error answer of the API (RFC 9457 problem+json), or no answer at all (``status`` None)."""

    def __init__(
        self,
        status: int | None,
        detail: str,
        *,
        title: str = "",
        type: str = "about:blank",
        errors: list[dict] | None = None,
        retry_after: float | None = None,
        body: dict | None = None,
    ):
        super().__init__(detail)
        self.status, self.detail, self.title, self.type = status, detail, title, type
        self.errors = errors or []
        self.retry_after = retry_after
        self.body = body or {}

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # not our API (a proxy's HTML page, say): keep the start of the text
            body = {"detail": resp.text[:500] or resp.reason_phrase}
        retry = resp.headers.get("Retry-After")
        return cls(
            resp.status_code,
            str(body.get("detail") or resp.reason_phrase),
            title=str(body.get("title") or resp.reason_phrase),
            type=str(body.get("type", "about:blank")),
            errors=body.get("errors") if isinstance(body.get("errors"), list) else None,
            retry_after=float(retry) if retry and retry.isdigit() else None,
            body=body,
        )

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"{self.status} {self.title}: {self.detail}" if self.title else f"{self.status}: {self.detail}"


class ApiUnreachable(ApiError):
    """The server could not be reached or the connection broke."""

    def __init__(self, detail: str):
        super().__init__(None, detail, title="Unreachable")


class WaitTimeout(TimeoutError):
    """``wait`` or ``events`` ran out of time; ``job`` is the last state seen."""

    def __init__(self, message: str, job: Job | None = None):
        super().__init__(message)
        self.job = job


def _time(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


def _blocks(fh, length: int, start: int, size: int, on_progress) -> Iterator[bytes]:
    """``length`` bytes of ``fh`` in blocks of a MiB, reporting progress as they go out."""
    sent = 0
    while sent < length and (block := fh.read(min(1024 * 1024, length - sent))):
        sent += len(block)
        yield block
        if on_progress is not None:
            on_progress(start + sent, size)


def _header_bytes(fh, name: str, size: int) -> int:
    """What the first chunk of a .safetensors file must hold: its length prefix and whole header (the server checks
    the header before it stores any data)."""
    if not name.lower().endswith(".safetensors"):
        return 0
    fh.seek(0)
    head = fh.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    return 8 + length if length <= size - 8 else 0


def _known(cls, data: Mapping) -> dict:
    """Only the fields this client knows, so newer servers that add fields do not break it."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class JobError:
    type: str
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    progress: float
    message: str
    params: dict[str, Any]
    seed: int
    device_requested: str
    device: str | None
    timeout_s: int
    attempt: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    links: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    queue_position: int | None = None  # while queued (GET of one job): 1 = starts next in its queue
    eta_s: float | None = None  # while queued: estimated seconds until it starts
    queue_ahead_over: int | None = None  # while queued behind a long queue: more than this many jobs ahead

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_json(cls, data: Mapping) -> Job:
        d = _known(cls, data)
        d["created_at"], d["started_at"], d["finished_at"] = (
            _time(data.get("created_at")),
            _time(data.get("started_at")),
            _time(data.get("finished_at")),
        )
        d["error"] = JobError(**_known(JobError, data["error"])) if data.get("error") else None
        return cls(**d)


@dataclass(frozen=True)
class MetricRow:
    step: int
    name: str
    value: float | None


@dataclass(frozen=True)
class Artifact:
    name: str
    media_type: str
    size: int
    sha256: str
    url: str


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    params_schema: dict[str, Any]
    example: dict[str, Any]


@dataclass(frozen=True)
class Dataset:
    """An uploaded dataset: ``status`` uploading, validating, ready or rejected (``reason``); shape and
    ``preview`` once ready."""

    id: str
    filename: str
    status: str
    format: str
    upload_size: int
    created_at: datetime
    size: int | None = None
    reason: str | None = None
    kind: str | None = None
    rows: int | None = None
    columns: int | None = None
    has_labels: bool | None = None
    sha256: str | None = None
    preview: dict[str, Any] | None = None  # on reading one dataset, not in the list
    queue_position: int | None = None  # while its validation waits for a worker: 1 = validated next

    @property
    def settled(self) -> bool:
        return self.status in ("ready", "rejected")

    @classmethod
    def from_json(cls, data: Mapping) -> Dataset:
        return cls(**{**_known(cls, data), "created_at": _time(data["created_at"])})


@dataclass(frozen=True)
class Model:
    """A stored model; ``use_as`` is the spec a job names it by. ``config`` and ``layers`` (a config model) or
    ``exported`` (inputs, outputs, parameters, operators of a .pt2) come with ``Client.model``."""

    id: str
    source: str
    filename: str
    format: str
    n_params: int
    n_tensors: int
    has_weights: bool
    created_at: datetime
    use_as: dict[str, Any]
    model_type: str | None = None
    task: str | None = None
    weights_size: int | None = None
    weights_sha256: str | None = None
    files: list[dict[str, Any]] | None = None
    config: dict[str, Any] | None = None
    layers: list[dict[str, Any]] | None = None
    exported: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Mapping) -> Model:
        return cls(**{**_known(cls, data), "created_at": _time(data["created_at"])})


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: ``status`` {status, progress, message, attempt} or ``metric`` {step, name, value}.
    ``id`` is the stream position to resume from (the last metric row id delivered)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


class _SseParser:
    """The text/event-stream format (WHATWG HTML §9.2): fields per line, an empty line dispatches the event."""

    def __init__(self, last_id: str | None):
        self.last_id = last_id
        self.retry_s = 1.0

    def feed(self, lines: Iterable[str]) -> Iterator[Event]:
        name = "message"
        data: list[str] = []
        for line in lines:
            if not line:
                if data:
                    yield Event(name, json.loads("\n".join(data)), self.last_id)
                name, data = "message", []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id" and "\0" not in value:
                self.last_id = value
            elif key == "retry" and value.isdigit():
                self.retry_s = int(value) / 1000


class Client:
    """A connection to one gradlab API. ``base_url`` and ``api_key`` default to GRADLAB_URL and GRADLAB_API_KEY."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0):
        self.base_url = (base_url or os.environ.get("GRADLAB_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("GRADLAB_API_KEY")
        headers = {"User-Agent": "gradlab-client/1", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"cannot reach {self.base_url}: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        return resp

    # --- jobs -------------------------------------------------------------------------------------------------
    def submit(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        """Submit ``{kind, params, seed?, device?, timeout_s?}``; with the same ``idempotency_key`` and body,
        a retry returns the job the first request made instead of a second one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.from_json(self._request("POST", "/v1/jobs", json=dict(spec), headers=headers).json())

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/v1/jobs/{job_id}").json())

    def _pages(self, path: str, query: Mapping[str, Any], limit: int | None, page_size: int) -> Iterator[dict]:
        """The items of a newest-first list, following ``next_cursor`` page by page; at most ``limit`` (None: all)."""
        cursor, seen = None, 0
        while limit is None or seen < limit:
            size = min(page_size, 500) if limit is None else min(page_size, 500, limit - seen)
            params = {k: v for k, v in {**query, "limit": size, "cursor": cursor}.items() if v is not None}
            page = self._request("GET", path, params=params).json()
            for item in page["items"]:
                seen += 1
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def list(
        self, status: str | None = None, kind: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """Jobs newest first, following ``next_cursor`` page by page; at most ``limit`` of them (None: all)."""
        for item in self._pages("/v1/jobs", {"status": status, "kind": kind}, limit, page_size):
            yield Job.from_json(item)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished one is an ApiError 409."""
        return Job.from_json(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def metrics(
        self, job_id: str, name: str | None = None, after_step: int | None = None, page_size: int = 1000
    ) -> Iterator[MetricRow]:
        """Every metric row (optionally of one name, after a step) in logging order, all pages."""
        cursor = None
        while True:
            query = {
                k: v
                for k, v in {"name": name, "after_step": after_step, "limit": page_size, "cursor": cursor}.items()
                if v is not None
            }
            page = self._request("GET", f"/v1/jobs/{job_id}/metrics", params=query).json()
            for item in page["items"]:
                yield MetricRow(**_known(MetricRow, item))
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def events(
        self, job_id: str, last_event_id: str | int | None = None, timeout: float | None = None
    ) -> Iterator[Event]:
        """The job's live events until its terminal status event; a broken connection is resumed with
        Last-Event-ID, so no metric row is lost or repeated. ``timeout`` bounds the whole wait (WaitTimeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = _SseParser(None if last_event_id is None else str(last_event_id))
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            # Reads may block for up to the server's keep-alive interval (10 s), or until the deadline.
            read = self.timeout if deadline is None else max(0.05, min(self.timeout, deadline - time.monotonic()))
            try:
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(self.timeout, read=read)
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise ApiError.from_response(resp)
                    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                        raise ApiError(
                            406,
                            f"{resp.url} answered {resp.headers.get('content-type')!r}, not an event stream",
                            title="Not Acceptable",
                        )
                    for event in parser.feed(resp.iter_lines()):
                        failures = 0
                        yield event
                        if event.event == "status" and event.data.get("status") in TERMINAL:
                            return
                        if deadline is not None and time.monotonic() >= deadline:
                            raise WaitTimeout(f"no terminal status of job {job_id} within {timeout:g} s")
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"no terminal status of job {job_id} within {timeout:g} s") from None
                failures += 1
                if failures > RECONNECTS:
                    raise ApiUnreachable(
                        f"event stream of job {job_id} at {self.base_url} keeps failing: "
                        f"{exc.__class__.__name__}: {exc}"
                    ) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"no terminal status of job {job_id} within {timeout:g} s")
            time.sleep(
                parser.retry_s if deadline is None else max(0.0, min(parser.retry_s, deadline - time.monotonic()))
            )

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job is succeeded, failed or cancelled and return it (with its result).

        Listens to the event stream; against a server without one it polls every ``poll_interval`` seconds.
        Raises WaitTimeout after ``timeout`` seconds (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self.events(job_id, timeout=timeout):
                if on_event is not None:
                    on_event(event)
            return self.get(job_id)
        except ApiError as exc:
            if exc.status not in (404, 405, 406, 501):
                raise
            self.get(job_id)  # a missing job raises here; otherwise the server just has no event stream
        except WaitTimeout as exc:
            raise WaitTimeout(str(exc), self.get(job_id)) from None
        while True:
            job = self.get(job_id)
            if job.terminal:
                return job
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise WaitTimeout(f"job {job_id} still {job.status} after {timeout:g} s", job)
            time.sleep(poll_interval)

    # --- artifacts --------------------------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> builtins.list[Artifact]:
        return [Artifact(**_known(Artifact, a)) for a in self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()]

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts/{name}").content

    def download_artifacts(self, job_id: str, out_dir: str | os.PathLike) -> builtins.list[Path]:
        """Save every artifact of the job into ``out_dir`` (made if missing), checking size and SHA-256."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        saved: builtins.list[Path] = []  # `list` in this class is the jobs listing
        for art in self.artifacts(job_id):
            filename = Path(art.name).name
            if filename in ("", ".", "..") or filename != art.name:
                raise ApiError(None, f"artifact name {art.name!r} is not a plain file name; not saved")
            data = self.artifact(job_id, art.name)
            if len(data) != art.size or hashlib.sha256(data).hexdigest() != art.sha256:
                raise ApiError(None, f"artifact {art.name!r} arrived corrupted (size or SHA-256 differ); not saved")
            part = out / f".{filename}.part"
            part.write_bytes(data)
            part.replace(out / filename)
            saved.append(out / filename)
        return saved

    # --- kinds and datasets -----------------------------------------------------------------------------------
    def kinds(self) -> builtins.list[Kind]:
        return [Kind(**_known(Kind, k)) for k in self._request("GET", "/v1/kinds").json()]

    def kind(self, name: str) -> Kind:
        return Kind(**_known(Kind, self._request("GET", f"/v1/kinds/{name}").json()))

    def upload_dataset(self, path: str | os.PathLike, label_column: str | None = None) -> Dataset:
        """Upload a small file in one request (at most the server's GRADLAB_MAX_UPLOAD_BYTES), validated before
        the answer; ``label_column`` names a CSV column holding labels. Big files: ``upload_dataset_resumable``."""
        path = Path(path)
        data = {"label_column": label_column} if label_column else None
        with path.open("rb") as fh:
            resp = self._request(
                "POST", "/v1/datasets", files={"file": (path.name, fh, "application/octet-stream")}, data=data
            )
        return Dataset.from_json(resp.json())

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.from_json(self._request("GET", f"/v1/datasets/{dataset_id}").json())

    def datasets(
        self, status: str | None = None, format: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[Dataset]:
        """The caller's datasets newest first (without previews), all pages; at most ``limit`` (None: all).
        ``status``: uploading, validating, ready or rejected; ``format``: npy, npz, csv, parquet or jsonl."""
        for item in self._pages("/v1/datasets", {"status": status, "format": format}, limit, page_size):
            yield Dataset.from_json(item)

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its stored files (ApiError 409 while a queued or running job uses it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def wait_dataset(
        self,
        dataset_id: str,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_poll: Callable[[Dataset], None] | None = None,
    ) -> Dataset:
        """The dataset once validated (ready or rejected); ``on_poll`` sees each state read before (its
        ``queue_position`` while it waits for a worker); ``WaitTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (ds := self.dataset(dataset_id)).settled:
            if on_poll is not None:
                on_poll(ds)
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise WaitTimeout(f"dataset {dataset_id} still {ds.status} after {timeout:g} s")
            time.sleep(poll_interval)
        return ds

    def start_upload(
        self, filename: str, size: int, sha256: str | None = None, label_column: str | None = None
    ) -> dict:
        """Begin a resumable upload; the answer has its ``id``, ``offset`` (0) and ``max_chunk_bytes``."""
        body = {"filename": filename, "size": size, "sha256": sha256, "label_column": label_column}
        return self._request("POST", "/v1/datasets/uploads", json={k: v for k, v in body.items() if v}).json()

    def abort_upload(self, upload_id: str) -> None:
        """Give up an upload still in progress: its bytes and its dataset go (ApiError 409 once completed)."""
        self._request("DELETE", f"/v1/datasets/uploads/{upload_id}")

    def upload_offset(self, upload_id: str) -> int:
        """The bytes the server holds of the upload: where to resume."""
        return int(self._request("HEAD", f"/v1/datasets/uploads/{upload_id}").headers["Upload-Offset"])

    def append_chunk(self, upload_id: str, offset: int, chunk: bytes | Iterable[bytes]) -> int:
        """Send bytes starting at ``offset``; returns the new offset."""
        resp = self._request(
            "PATCH",
            f"/v1/datasets/uploads/{upload_id}",
            content=chunk,
            headers={"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        )
        return int(resp.json()["offset"])

    def put_tokenizer(self, upload_id: str, path: str | os.PathLike) -> None:
        with Path(path).open("rb") as fh:
            self._request("PUT", f"/v1/datasets/uploads/{upload_id}/tokenizer", content=fh.read())

    def complete_upload(self, upload_id: str) -> Dataset:
        """All bytes sent: the server validates the upload in a worker (``status: validating``)."""
        return Dataset.from_json(self._request("POST", f"/v1/datasets/uploads/{upload_id}/complete").json())

    def upload_dataset_resumable(
        self,
        path: str | os.PathLike,
        label_column: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        upload_id: str | None = None,
        chunk_bytes: int = 64 * 1024 * 1024,
        on_progress: Callable[[int, int], None] | None = None,
        on_started: Callable[[str, str], None] | None = None,
    ) -> Dataset:
        """Upload ``path`` in chunks, resuming upload ``upload_id`` where the server left it when given (else a
        new one, announced through ``on_started(upload_id, dataset_id)`` so a caller can remember it and say which
        dataset it makes); ``on_progress(sent, size)`` after each block. Returns the dataset as completed
        (validating); ``wait_dataset`` waits for its verdict."""
        path = Path(path)
        size = path.stat().st_size
        if upload_id is None:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(1024 * 1024):
                    digest.update(block)
            started = self.start_upload(path.name, size, digest.hexdigest(), label_column)
            upload_id, offset = started["id"], 0
            chunk_bytes = min(chunk_bytes, started["max_chunk_bytes"])
            if on_started is not None:
                on_started(upload_id, started["dataset_id"])
            if tokenizer is not None:
                self.put_tokenizer(upload_id, tokenizer)
        else:
            offset = self.upload_offset(upload_id)
        if on_progress is not None:
            on_progress(offset, size)
        with path.open("rb") as fh:
            while offset < size:
                fh.seek(offset)
                offset = self.append_chunk(
                    upload_id, offset, _blocks(fh, min(chunk_bytes, size - offset), offset, size, on_progress)
                )
        return self.complete_upload(upload_id)

    # --- models -----------------------------------------------------------------------------------------------
    def upload_model(
        self,
        config: str | os.PathLike | None = None,
        weights: str | os.PathLike | None = None,
        program: str | os.PathLike | None = None,
    ) -> Model:
        """A small model in one request (at most the server's GRADLAB_MAX_MODEL_UPLOAD_BYTES), checked before the
        answer: ``config`` (config.json) with optional ``weights`` (one .safetensors), or ``program`` (a .pt2).
        Large or sharded ones: ``upload_model_resumable``."""
        parts = {"config": config, "weights": weights, "program": program}
        with ExitStack() as files:
            sent = {
                field: (Path(path).name, files.enter_context(Path(path).open("rb")), "application/octet-stream")
                for field, path in parts.items()
                if path is not None
            }
            return Model.from_json(self._request("POST", "/v1/models", files=sent).json())

    def models(
        self, source: str | None = None, format: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[Model]:
        """The tenant's models newest first, page by page; at most ``limit`` (None: all). ``source``: uploaded or
        exported; ``format``: config, safetensors, sharded or exported."""
        for item in self._pages("/v1/models", {"source": source, "format": format}, limit, page_size):
            yield Model.from_json(item)

    def model(self, model_id: str) -> Model:
        return Model.from_json(self._request("GET", f"/v1/models/{model_id}").json())

    def delete_model(self, model_id: str) -> None:
        """Delete a model and its bytes; an ApiError 409 while a queued or running job uses it."""
        self._request("DELETE", f"/v1/models/{model_id}")

    def start_model_upload(self, files: Iterable[tuple[str, int]]) -> dict:
        """Declare the (name, size) files of one model; the answer has the upload's ``id``, ``model_id`` and each
        file's ``offset`` (0)."""
        body = {"files": [{"name": name, "size": size} for name, size in files]}
        return self._request("POST", "/v1/models/uploads", json=body).json()

    def model_upload(self, upload_id: str) -> dict:
        """The upload as the server holds it: each file's ``offset`` (bytes received), where to resume."""
        return self._request("GET", f"/v1/models/uploads/{upload_id}").json()

    def append_model_chunk(self, upload_id: str, name: str, offset: int, chunk: bytes | Iterable[bytes]) -> int:
        """Send bytes of one file starting at ``offset``; returns its new offset."""
        resp = self._request(
            "PATCH",
            f"/v1/models/uploads/{upload_id}/files/{name}",
            content=chunk,
            headers={"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        )
        return int(resp.json()["offset"])

    def complete_model_upload(self, upload_id: str) -> Model:
        """All bytes sent: the server checks the model and stores it (or refuses it, ApiError 422)."""
        return Model.from_json(self._request("POST", f"/v1/models/uploads/{upload_id}/complete").json())

    def upload_model_resumable(
        self,
        paths: Iterable[str | os.PathLike],
        upload_id: str | None = None,
        chunk_bytes: int = 64 * 1024 * 1024,
        on_progress: Callable[[int, int], None] | None = None,
        on_started: Callable[[dict], None] | None = None,
    ) -> Model:
        """Upload the files of one model (config.json with model.safetensors, or with a sharded checkpoint's index
        and shards; or one .pt2) in chunks, resuming upload ``upload_id`` where the server left it when given (else
        a new one, announced through ``on_started`` with the server's answer); ``on_progress(sent, total)`` after
        each block. Returns the stored model."""
        files = {Path(p).name: Path(p) for p in paths}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        if upload_id is None:
            started = self.start_model_upload(sizes.items())
            if on_started is not None:
                on_started(started)
        else:
            started = self.model_upload(upload_id)
            if {(f["name"], f["size"]) for f in started["files"]} != set(sizes.items()):
                raise ValueError(f"upload {upload_id} was declared with other files or sizes than these")
        upload_id, model_id = started["id"], started["model_id"]
        chunk_bytes = max(min(chunk_bytes, started["max_chunk_bytes"]), started["min_chunk_bytes"])
        offsets = {f["name"]: f["offset"] for f in started["files"]}
        total, before = sum(sizes.values()), 0
        for name, path in files.items():
            self._send_file(upload_id, name, path, offsets[name], before, total, chunk_bytes, on_progress)
            before += sizes[name]
        try:
            return self.complete_model_upload(upload_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return self.model(model_id)  # completed by an earlier call whose answer was lost

    def _send_file(
        self,
        upload_id: str,
        name: str,
        path: Path,
        offset: int,
        before: int,
        total: int,
        chunk_bytes: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        size = path.stat().st_size
        if on_progress is not None:
            on_progress(before + offset, total)
        with path.open("rb") as fh:
            while offset < size:
                room = max(chunk_bytes, _header_bytes(fh, name, size)) if offset == 0 else chunk_bytes
                fh.seek(offset)
                offset = self.append_model_chunk(
                    upload_id, name, offset, _blocks(fh, min(room, size - offset), before + offset, total, on_progress)
                )

    # --- studies ----------------------------------------------------------------------------------------------
    def submit_study(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> dict:
        """Submit ``{kind, base, grid | settings, seeds, baseline?, device?, timeout_s?}``: one job per setting and
        seed. Returns the study (a dict, as the API answers: status, progress, jobs, comparison, links)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/studies", json=dict(spec), headers=headers).json()

    def study(self, study_id: str) -> dict:
        return self._request("GET", f"/v1/studies/{study_id}").json()

    def studies(
        self, status: str | None = None, kind: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[dict]:
        """The caller's studies newest first, all pages; at most ``limit`` (None: all). Each as the list answers
        it: status, progress, counts of children per status, settings' labels, seeds (no comparison)."""
        yield from self._pages("/v1/studies", {"status": status, "kind": kind}, limit, page_size)

    def cancel_study(self, study_id: str) -> dict:
        """Cancel the study's queued and running jobs; finished ones keep their results."""
        return self._request("POST", f"/v1/studies/{study_id}/cancel").json()

    def study_csv(self, study_id: str) -> str:
        return self._request("GET", f"/v1/studies/{study_id}/comparison.csv", headers={"Accept": "text/csv"}).text
