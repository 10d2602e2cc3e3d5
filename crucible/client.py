"""A Python client for Crucible's HTTP API: jobs, runs, and live events that resume by
themselves after a dropped connection (with `Last-Event-ID`, so nothing is lost or doubled).

    with Client("http://127.0.0.1:8080", api_key) as crucible:
        job = crucible.run_job(JobSpec(language="python", code="print(6 * 7)"))
        print(job.verdict, job.stdout)

`Client` is synchronous, `AsyncClient` the same API for asyncio. The URL and key default to
`CRUCIBLE_URL` and `CRUCIBLE_API_KEY`. A request refused with 429 (rate limit, queue full) or
503 (bus down), which store nothing, is sent again after its `Retry-After`, for up to five
minutes in all.

Errors::

    CrucibleError
     ├── ApiError: the gateway refused a request (`status_code`, `detail`)
     └── StreamError: an event stream broke and could not be resumed
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence

import httpx
from httpx_sse import aconnect_sse, connect_sse

from bus import JobSpec
from crucible.client_base import (
    ApiError,
    ClientConfig,
    CrucibleError,
    Event,
    StreamError,
    StreamResume,
    async_batch_request,
    batch_bodies,
    batch_request,
    check,
    is_job_end,
    is_run_end,
    merge_accepted,
    retry_delay,
)
from gateway.run_schemas import RunAccepted, RunList, RunProgress, RunView
from gateway.schemas import JobAccepted, JobView

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "CrucibleError",
    "Event",
    "StreamError",
]

ProgressCallback = Callable[[RunProgress], None]


class Client:
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        self.config = ClientConfig.create(url, api_key, timeout_s)
        self._http = httpx.Client(
            base_url=self.config.url,
            headers=self.config.headers,
            timeout=self.config.timeout,
            verify=self.config.verify,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self, method: str, path: str, batch: bytes | None = None, **kwargs: object
    ) -> httpx.Response:
        """The response, retried while the gateway says to wait; `batch`: a run's JSON."""
        waited_s = 0.0
        while True:
            sent = kwargs if batch is None else {**kwargs, **batch_request(batch)}
            try:
                response = self._http.request(method, path, **sent)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:
                raise CrucibleError(f"{method} {path}: {exc!r}") from exc
            delay = retry_delay(response, waited_s, self.config.retry_budget_s)
            if delay is None:
                return check(response)
            time.sleep(delay)
            waited_s += delay

    # Jobs

    def submit(self, spec: JobSpec) -> JobAccepted:
        """Queue one job."""
        body = spec.model_dump(mode="json", exclude_unset=True)
        return JobAccepted.model_validate_json(self._request("POST", "/v1/jobs", json=body).content)

    def job(self, job_id: str) -> JobView:
        """The job now: its status, and its result once finished."""
        return JobView.model_validate_json(self._request("GET", f"/v1/jobs/{job_id}").content)

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events until `finished`, resuming by itself after a dropped connection."""
        return self._stream(f"/v1/jobs/{job_id}/events", last_event_id, is_job_end)

    def wait(self, job_id: str) -> JobView:
        """Follow the job to its end and return its result."""
        for event in self.events(job_id):
            if is_job_end(event):
                break
        return self.job(job_id)

    def run_job(self, spec: JobSpec) -> JobView:
        """Submit a job and wait for its result."""
        return self.wait(self.submit(spec).id)

    # Runs

    def submit_run(
        self, jobs: Iterable[JobSpec], metadata: dict[str, object] | None = None
    ) -> RunAccepted:
        """Queue a run of any size: the first batch creates it, later batches append. `jobs`
        may be a generator: each batch is made as it is sent (one that raises part way
        leaves the batches sent before as the run)."""
        bodies = batch_bodies(jobs, metadata or {}, self.config.max_batch_bytes)
        first = RunAccepted.model_validate_json(
            self._request("POST", "/v1/runs", batch=next(bodies)).content
        )
        appended = [
            RunAccepted.model_validate_json(
                self._request("POST", f"/v1/runs/{first.id}/jobs", batch=body).content
            )
            for body in bodies
        ]
        return merge_accepted(first, appended)

    def run(self, run_id: str, ks: Sequence[int] | None = None) -> RunView:
        """Counts per status and verdict, and pass@k (for `ks`, default 1, 10, 100)."""
        params = {"k": ",".join(map(str, ks))} if ks else None
        response = self._request("GET", f"/v1/runs/{run_id}", params=params)
        return RunView.model_validate_json(response.content)

    def runs(self, limit: int = 50, before: str | None = None) -> RunList:
        """Your runs, newest first; pass the last id as `before` for the next page."""
        params: dict[str, str | int] = {"limit": limit}
        if before is not None:
            params["before"] = before
        return RunList.model_validate_json(self._request("GET", "/v1/runs", params=params).content)

    def run_events(self, run_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """Each job's `finished` and the `progress` after it, until the last job is done."""
        return self._stream(f"/v1/runs/{run_id}/events", last_event_id, is_run_end)

    def wait_run(
        self, run_id: str, on_progress: ProgressCallback | None = None, ks: Sequence[int] = ()
    ) -> RunView:
        """Follow the run to its end (calling `on_progress`) and return its summary."""
        for event in self.run_events(run_id):
            if event.event == "progress" and on_progress is not None:
                on_progress(event.progress())
        return self.run(run_id, ks or None)

    def results(self, run_id: str) -> Iterator[JobView]:
        """Every job of the run, in submission order, read as the gateway streams them."""
        path = f"/v1/runs/{run_id}/results"
        try:
            with self._http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    check(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield JobView.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise CrucibleError(f"GET {path}: {exc!r}") from exc

    def _stream(
        self, path: str, last_event_id: str | None, is_end: Callable[[Event], bool]
    ) -> Iterator[Event]:
        resume = StreamResume(path, last_event_id, self.config.max_reconnects)
        while True:
            try:
                with connect_sse(self._http, "GET", path, headers=resume.headers()) as source:
                    if not source.response.is_success:
                        source.response.read()
                        check(source.response)
                    for sse in source.iter_sse():
                        event = resume.seen(sse)
                        yield event
                        if is_end(event):
                            return
            except httpx.TransportError as exc:
                resume.failed(exc)
            else:
                resume.failed(None)  # closed before its end: a restarting gateway
            resume.pause_sync()


class AsyncClient:
    """The same API for asyncio. Use with `async with`, or call `await close()`."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        self.config = ClientConfig.create(url, api_key, timeout_s)
        self._http = httpx.AsyncClient(
            base_url=self.config.url,
            headers=self.config.headers,
            timeout=self.config.timeout,
            verify=self.config.verify,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, batch: bytes | None = None, **kwargs: object
    ) -> httpx.Response:
        waited_s = 0.0
        while True:
            sent = kwargs if batch is None else {**kwargs, **async_batch_request(batch)}
            try:
                response = await self._http.request(method, path, **sent)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:
                raise CrucibleError(f"{method} {path}: {exc!r}") from exc
            delay = retry_delay(response, waited_s, self.config.retry_budget_s)
            if delay is None:
                return check(response)
            await asyncio.sleep(delay)
            waited_s += delay

    async def submit(self, spec: JobSpec) -> JobAccepted:
        body = spec.model_dump(mode="json", exclude_unset=True)
        response = await self._request("POST", "/v1/jobs", json=body)
        return JobAccepted.model_validate_json(response.content)

    async def job(self, job_id: str) -> JobView:
        return JobView.model_validate_json(
            (await self._request("GET", f"/v1/jobs/{job_id}")).content
        )

    def events(self, job_id: str, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._stream(f"/v1/jobs/{job_id}/events", last_event_id, is_job_end)

    async def wait(self, job_id: str) -> JobView:
        async for event in self.events(job_id):
            if is_job_end(event):
                break
        return await self.job(job_id)

    async def run_job(self, spec: JobSpec) -> JobView:
        return await self.wait((await self.submit(spec)).id)

    async def submit_run(
        self, jobs: Iterable[JobSpec], metadata: dict[str, object] | None = None
    ) -> RunAccepted:
        bodies = batch_bodies(jobs, metadata or {}, self.config.max_batch_bytes)
        response = await self._request("POST", "/v1/runs", batch=next(bodies))
        first = RunAccepted.model_validate_json(response.content)
        appended = []
        for body in bodies:
            response = await self._request("POST", f"/v1/runs/{first.id}/jobs", batch=body)
            appended.append(RunAccepted.model_validate_json(response.content))
        return merge_accepted(first, appended)

    async def run(self, run_id: str, ks: Sequence[int] | None = None) -> RunView:
        params = {"k": ",".join(map(str, ks))} if ks else None
        response = await self._request("GET", f"/v1/runs/{run_id}", params=params)
        return RunView.model_validate_json(response.content)

    async def runs(self, limit: int = 50, before: str | None = None) -> RunList:
        params: dict[str, str | int] = {"limit": limit}
        if before is not None:
            params["before"] = before
        response = await self._request("GET", "/v1/runs", params=params)
        return RunList.model_validate_json(response.content)

    def run_events(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._stream(f"/v1/runs/{run_id}/events", last_event_id, is_run_end)

    async def wait_run(
        self, run_id: str, on_progress: ProgressCallback | None = None, ks: Sequence[int] = ()
    ) -> RunView:
        async for event in self.run_events(run_id):
            if event.event == "progress" and on_progress is not None:
                on_progress(event.progress())
        return await self.run(run_id, ks or None)

    async def results(self, run_id: str) -> AsyncIterator[JobView]:
        path = f"/v1/runs/{run_id}/results"
        try:
            async with self._http.stream("GET", path) as response:
                if not response.is_success:
                    await response.aread()
                    check(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield JobView.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise CrucibleError(f"GET {path}: {exc!r}") from exc

    async def _stream(
        self, path: str, last_event_id: str | None, is_end: Callable[[Event], bool]
    ) -> AsyncIterator[Event]:
        resume = StreamResume(path, last_event_id, self.config.max_reconnects)
        while True:
            try:
                async with aconnect_sse(
                    self._http, "GET", path, headers=resume.headers()
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        check(source.response)
                    async for sse in source.aiter_sse():
                        event = resume.seen(sse)
                        yield event
                        if is_end(event):
                            return
            except httpx.TransportError as exc:
                resume.failed(exc)
            else:
                resume.failed(None)
            await resume.pause()
