"""The worker: pull a job, run it in a fresh sandbox, publish what happens, and only then ack.

Delivery is at least once. A job is acked after its `finished` event is stored; a worker
that dies before that leaves the job to be redelivered, and it runs again as a new attempt.
Attempts are the runs that started (stored `started` events), not deliveries: once
`max_attempts` have started, the next delivery records `internal_error` instead.

Per job the bus is in the way as little as it can be: a first delivery reads no history (see
`_process`), a redelivery reads it while it checks for a cancel request, `started` and output
are stored beside the sandbox run (workers/events.py), the ack is not waited for, and while
a job runs its slot fetches the next one, when more are queued, and reads what it must first:
the next job starts as soon as the sandbox is free, while the last job's `finished` is still
being stored. A job fetched so waits a moment at most (`_AHEAD_HOLD_S`): behind a long job it
goes back to the queue for a free slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from bus import (
    MAX_ATTEMPTS_METADATA,
    BusUnavailableError,
    CancelRequest,
    JetStreamRequests,
    JobMessage,
    JobResult,
    NatsSettings,
    RuntimeVersion,
    SupersededError,
    WorkerHeartbeat,
    connect,
    message_context,
    utc_now,
)
from bus import subjects as s
from bus.pull import Puller
from observability import job_id_var
from observability.tracing import start_as_current_span
from sandbox import Sandbox
from workers import metrics
from workers.bus_backoff import BusBackoff
from workers.events import AttemptEvents, StaleHistoryError
from workers.execute import execute
from workers.history import History, job_history
from workers.judge import cancelled, platform_failure
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Heartbeat a running job this many times per ack wait, so that a slow job is never
# mistaken for a dead worker's.
_PROGRESS_PER_ACK_WAIT = 3
_CONSUMER_RETRY_S = 0.5
_NAK_DELAY_S = 1.0
# A fetch ahead (while the slot's sandbox is busy) waits only this long for a job: a longer
# pull would take jobs that arrive later away from workers that are free.
_AHEAD_WAIT_S = 0.02
# A job fetched ahead waits this long for its slot, then goes back to the queue for any free
# slot: the job before it turned out long.
_AHEAD_HOLD_S = 0.25


class _Turn:
    """A job's turn at its slot's sandbox: after the job before it, until `release()`."""

    def __init__(
        self, after: asyncio.Future[None], free: asyncio.Future[None], busy: Callable[[int], None]
    ) -> None:
        self._after = after
        self._free = free
        self._busy = busy
        self._taken = False
        self._released = False

    async def take(self) -> bool:
        """Wait for the sandbox; False when the job before holds it past `_AHEAD_HOLD_S`."""
        if not self._taken:
            if not self._after.done():  # most jobs find the sandbox free: no timer for them
                with suppress(TimeoutError):
                    async with asyncio.timeout(_AHEAD_HOLD_S):
                        await asyncio.shield(self._after)
            self._taken = self._after.done()
            if self._taken:
                self._busy(1)
        return self._taken

    def release(self) -> None:
        """The sandbox is free for the next job, once the job before is done with it too."""
        if self._released:
            return
        self._released = True
        if self._taken:
            self._busy(-1)
        self._after.add_done_callback(self._pass_on)

    def _pass_on(self, _: asyncio.Future[None]) -> None:
        if not self._free.done():
            self._free.set_result(None)


class Worker:
    """One worker process: `concurrency` slots, each running one job at a time."""

    def __init__(self, settings: WorkerSettings, nats: NatsSettings, sandbox: Sandbox) -> None:
        self.settings = settings
        self._nats_settings = nats
        self._sandbox = sandbox
        self._stopping = asyncio.Event()
        self._backoff = BusBackoff(self._stopping)
        self._busy = 0
        self._running: dict[str, asyncio.Task[JobResult]] = {}  # job id -> its sandbox run
        self._claimed: set[str] = set()  # jobs fetched and not done: a cancel notice is kept
        self._cancelled: set[str] = set()

    def stop(self) -> None:
        """Stop fetching; running jobs get the grace period (SIGTERM lands here)."""
        self._stopping.set()

    async def run(self) -> None:
        """Serve jobs until `stop()`, then shut down in order."""
        await self._sandbox.check()  # never run code without a working sandbox
        nc = await connect(self._nats_settings, service="worker", name=self.settings.worker_id)
        requests = JetStreamRequests(nc)
        puller = Puller(nc, s.JOBS_STREAM, s.WORKERS_CONSUMER)
        try:
            await nc.subscribe(s.CANCEL_ALL, cb=self._on_cancel)
            consumer = await self._consumer_settings(nc.jetstream())
            if consumer is None:
                return
            max_attempts, ack_wait_s = consumer
            await requests.start()
            await puller.start()
            if self.settings.metrics_port is not None:
                metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
            metrics.SLOTS.set(self.settings.concurrency)
            log.info("worker ready", extra={"concurrency": self.settings.concurrency})
            heartbeat = asyncio.create_task(self._heartbeat(nc))
            slots = [
                asyncio.create_task(self._slot(requests, puller, max_attempts, ack_wait_s))
                for _ in range(self.settings.concurrency)
            ]
            await self._stopping.wait()
            await self._drain(slots)
            heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await heartbeat
        finally:
            await puller.close()
            await requests.close()
            await self._sandbox.close()
            # Not drain(): nothing is left to drain. Every job is acked or handed back by now;
            # flush so those last acks (and naks) leave first.
            with suppress(Exception):
                await nc.flush()
            await nc.close()

    async def _consumer_settings(self, js: JetStreamContext) -> tuple[int, float] | None:
        """Attempts and ack wait come from the consumer itself, so they cannot drift."""
        while not self._stopping.is_set():
            try:
                info = await js.consumer_info(s.JOBS_STREAM, s.WORKERS_CONSUMER)
            except NotFoundError:
                log.info("waiting for the gateway to create the job queue")
                await asyncio.sleep(_CONSUMER_RETRY_S)
                continue
            assert info.config.ack_wait is not None
            attempts = (info.config.metadata or {}).get(MAX_ATTEMPTS_METADATA)
            if attempts is None:
                log.info("waiting for the gateway to update the job queue")
                await asyncio.sleep(_CONSUMER_RETRY_S)
                continue
            return int(attempts), info.config.ack_wait
        return None  # stopped before the queue existed: nothing to serve

    async def _drain(self, slots: list[asyncio.Task[None]]) -> None:
        """Let running jobs finish within the grace period; hand the rest back."""
        _, late = await asyncio.wait(slots, timeout=self.settings.shutdown_grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _heartbeat(self, nc: NATS) -> None:
        runtimes = [RuntimeVersion(**r.model_dump()) for r in self._sandbox.runtimes()]
        subject = s.worker_subject(self.settings.worker_id)
        while True:
            beat = WorkerHeartbeat(
                worker_id=self.settings.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                backend=self._sandbox.name,
                runtimes=runtimes,
                capacity=self.settings.concurrency,
                busy=self._busy,
            )
            with suppress(Exception):  # a missed heartbeat is harmless; the next one follows
                await nc.publish(subject, beat.model_dump_json().encode())
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _slot(
        self,
        requests: JetStreamRequests,
        puller: Puller,
        max_attempts: int,
        ack_wait_s: float,
    ) -> None:
        """One sandbox's worth of jobs, one at a time. While a job runs, the next is fetched
        and made ready (its history and cancel request read) when more are queued, so that
        it starts as soon as the sandbox is free; at most one job waits so."""
        jobs: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()  # set when the sandbox is free
        turn.set_result(None)
        try:
            while not self._stopping.is_set():
                await self._backoff.wait()
                ahead = not turn.done()
                wait_s = _AHEAD_WAIT_S if ahead else self.settings.fetch_wait_s
                msg = await self._fetch(puller, wait_s)
                if msg is None:
                    if ahead:  # taken by other workers after all: wait for the sandbox
                        await turn
                    continue
                free = loop.create_future()
                job = asyncio.create_task(
                    self._serve(
                        requests, msg, max_attempts, ack_wait_s, _Turn(turn, free, self._count)
                    )
                )
                jobs.add(job)
                job.add_done_callback(jobs.discard)
                # A queue that held nothing more when this job came: the next fetch waits
                # until the sandbox is free, so that a job arriving meanwhile goes to a free
                # worker instead of waiting here.
                await (turn if msg.metadata.num_pending else free)
                turn = free
            if jobs:
                await asyncio.wait(jobs)
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    async def _fetch(self, puller: Puller, wait_s: float) -> Msg | None:
        try:
            return await puller.next(wait_s)
        except Exception:
            log.exception("fetching a job failed; retrying")
            await asyncio.sleep(self.settings.fetch_wait_s)
            return None

    async def _serve(
        self,
        requests: JetStreamRequests,
        msg: Msg,
        max_attempts: int,
        ack_wait_s: float,
        turn: _Turn,
    ) -> None:
        """Process one job; its turn is released once its sandbox is no longer needed."""
        try:
            await self._process(requests, msg, max_attempts, ack_wait_s, turn)
        except Exception as exc:
            # The bus failed before the job ran (NATS restarting, a node lost): the slot
            # lives on, and the job comes back, at once if the bus takes the nak, else after
            # its ack wait.
            await self._hand_back(msg, "could not process a job", exc)
        finally:
            turn.release()

    async def _hand_back(self, msg: Msg, failure: str, exc: Exception) -> None:
        """After the platform failed a job: back to the queue in `_NAK_DELAY_S` (after its
        ack wait if the bus takes no nak either), and this worker's next fetch paused."""
        pause_s = self._backoff.failed()
        log.error(
            "%s (%s); handed back, next fetch in %.2f s",
            failure,
            exc,
            pause_s,
            # A bus that fails is said in a line; anything else gets its traceback.
            exc_info=not isinstance(exc, BusUnavailableError),
        )
        with suppress(Exception):
            await msg.nak(delay=_NAK_DELAY_S)

    def _count(self, busy: int) -> None:
        self._busy += busy
        metrics.SLOTS_BUSY.set(self._busy)

    async def _process(
        self,
        requests: JetStreamRequests,
        msg: Msg,
        max_attempts: int,
        ack_wait_s: float,
        turn: _Turn,
    ) -> None:
        try:
            job = JobMessage.model_validate_json(msg.data)
        except ValidationError:
            log.error("dropping a malformed job message on %s", msg.subject)
            await msg.term()  # redelivering it would fail the same way forever
            return
        token = job_id_var.set(job.job_id)
        self._claimed.add(job.job_id)
        # A first delivery has nothing stored to read: no earlier attempt could have run it.
        # Should that be wrong (a server that crashed may have lost its count of deliveries),
        # the attempt's first store, conditional on the job having no events at all, is
        # refused (StaleHistoryError) before anything is stored, and the history is read then.
        assumed = History() if msg.metadata.num_delivered == 1 else None
        try:
            try:
                await self._deliver(requests, msg, job, assumed, max_attempts, ack_wait_s, turn)
            except StaleHistoryError:
                if assumed is None:
                    raise
                log.info("a first delivery found earlier events stored; reading them")
                await self._deliver(requests, msg, job, None, max_attempts, ack_wait_s, turn)
        except SupersededError:
            # The job was redelivered while this attempt was cut off, and the newer attempt
            # owns it now: stop without a word (no ack, no nak), so as to add no result.
            log.warning("another attempt of this job took over; this one stops")
        finally:
            self._claimed.discard(job.job_id)
            self._cancelled.discard(job.job_id)
            job_id_var.reset(token)

    async def _deliver(
        self,
        requests: JetStreamRequests,
        msg: Msg,
        job: JobMessage,
        known: History | None,
        max_attempts: int,
        ack_wait_s: float,
        turn: _Turn,
    ) -> None:
        """One go at the job from what is stored (`known`, or read now)."""
        if known is None:
            history, cancel_requested = await asyncio.gather(
                job_history(requests, job), _cancel_requested(requests, job.job_id)
            )
        else:
            history, cancel_requested = known, await _cancel_requested(requests, job.job_id)
        if history.finished:
            # An earlier delivery stored its result, then lost its ack (its worker died
            # in between): the job is done, and running it again would give two results.
            await msg.ack()
            log.info("job already finished by an earlier attempt; acknowledged")
            return
        attempt = history.next_attempt()
        if attempt <= max_attempts and not cancel_requested and not await turn.take():
            await msg.nak()
            log.info("the job before it in this slot runs on; handed back for a free slot")
            return
        with start_as_current_span(
            tracer,
            f"process {s.JOBS_STREAM}",
            context=message_context(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "messaging.message.id": job.job_id,
                "crucible.job_id": job.job_id,
                "crucible.run_id": job.run_id,
                "crucible.attempt": attempt,
            },
        ) as span:
            waited = (utc_now() - job.submitted_at).total_seconds()
            span.add_event("dequeued", {"crucible.queue_wait_s": max(waited, 0.0)})
            events = AttemptEvents(
                requests, job, attempt, self.settings.worker_id, after_seq=history.last_seq
            )
            cancel_requested = cancel_requested or job.job_id in self._cancelled
            await self._attempt(msg, job, events, cancel_requested, max_attempts, ack_wait_s, turn)

    async def _attempt(
        self,
        msg: Msg,
        job: JobMessage,
        events: AttemptEvents,
        cancel_requested: bool,
        max_attempts: int,
        ack_wait_s: float,
        turn: _Turn,
    ) -> None:
        if events.attempt > max_attempts:
            log.error("job failed %d attempts; recording internal_error", max_attempts)
            reason = f"gave up after {max_attempts} attempts: the workers running it failed"
            await events.finished(platform_failure(reason))
            await msg.ack()
            return
        if cancel_requested:
            await events.finished(cancelled("cancelled before it started"))
            await msg.ack()
            log.info("job cancelled before it started")
            return
        progress = asyncio.create_task(self._keep_alive(msg, ack_wait_s))
        try:
            started_at = utc_now()
            events.started()  # stored while the sandbox starts; `finished` waits for it
            # ~50 us of CPU (a record, its JSON, a write), as much as a store: worth it, so that
            # a worker that dies mid-job leaves in its own log the job it was running.
            log.info("job started", extra={"attempt": events.attempt})
            result = await self._run(job, events, started_at)
            turn.release()
            await events.finished(result)
            self._backoff.worked()
            metrics.record_finished(job, result)
            # Only now: the result is stored. Not waited for: an ack that is lost brings the
            # job back, and the next delivery finds its result stored and acks it.
            await msg.ack()
            log.info(
                "job finished",
                extra={"attempt": events.attempt, "verdict": result.verdict.value},
            )
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the job back for another worker at once.
            events.abandon()
            with suppress(Exception):
                await msg.nak()
            raise
        except BusUnavailableError as exc:
            # Its result is not stored: it runs again. The JOBS stream may well be up while
            # EVENTS is not (a cluster electing a leader): hand the job back now, and fetch
            # no more until the pause is over, so as not to run job after job for nothing.
            await self._hand_back(msg, "could not store the job's events", exc)
        except SupersededError:
            raise  # _process knows whether to read the history and try again
        except Exception:
            log.exception("the platform failed while running the job; handing it back")
            with suppress(Exception):
                await msg.nak(delay=_NAK_DELAY_S)
        finally:
            progress.cancel()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            job_id = CancelRequest.model_validate_json(msg.data).job_id
        except ValidationError:
            return
        if msg.subject != s.cancel_subject(job_id):
            return  # a request for one job, replayed onto another's subject
        run = self._running.get(job_id)
        if run is not None:
            self._cancelled.add(job_id)
            run.cancel()  # the sandbox kills the job's processes as the run unwinds
        elif job_id in self._claimed:
            # Fetched, not started: its KV check may have been read before the request was
            # written. Kept here, it stops the job before the sandbox starts.
            self._cancelled.add(job_id)

    async def _run(self, job: JobMessage, events: AttemptEvents, started_at: datetime) -> JobResult:
        """The sandbox run, cancellable on its own by a cancel request for this job."""
        run = asyncio.create_task(execute(self._sandbox, job, events.output, started_at))
        self._running[job.job_id] = run
        try:
            return await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if job.job_id in self._cancelled and not (current and current.cancelling()):
                return cancelled("cancelled while running", started_at)
            raise  # a shutdown, not a cancel request: the job goes back to the queue
        finally:
            self._running.pop(job.job_id, None)

    async def _keep_alive(self, msg: Msg, ack_wait_s: float) -> None:
        while True:
            await asyncio.sleep(ack_wait_s / _PROGRESS_PER_ACK_WAIT)
            with suppress(Exception):
                await msg.in_progress()


async def _cancel_requested(requests: JetStreamRequests, job_id: str) -> bool:
    """True when the job was cancelled while it waited in the queue."""
    request = await requests.last_message(s.CANCELS_BUCKET_STREAM, s.cancel_key_subject(job_id))
    return request is not None
