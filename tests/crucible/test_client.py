"""The Python client against the real stack: jobs, runs, typed results, automatic resume."""

from __future__ import annotations

import gc
import ssl
import tracemalloc
from collections.abc import Iterator

import pytest

from bus import Case, JobSpec, Limits, Verdict
from crucible.client import ApiError, AsyncClient, Client, CrucibleError, Event
from crucible.client_base import ClientConfig, batch_bodies
from gateway.run_schemas import RunProgress
from tests.proxy import CuttingProxy
from tests.stack import Stack


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, stack.api_key) as crucible:
        yield crucible


def test_run_job_returns_a_typed_result(client: Client) -> None:
    job = client.run_job(JobSpec(language="python", code="print(6 * 7)"))
    assert job.verdict is Verdict.ACCEPTED and job.stdout == "42\n" and job.exit_code == 0
    events = list(client.events(job.id))
    assert events[0].event == "queued" and events[-1].job().verdict is Verdict.ACCEPTED


def test_errors_are_api_errors_with_the_gateways_detail(client: Client, stack: Stack) -> None:
    with pytest.raises(ApiError) as refused:
        client.submit(JobSpec(language="cobol", code="x"))
    assert refused.value.status_code == 422 and "unknown language" in refused.value.detail
    with pytest.raises(ApiError) as missing:
        client.run(f"r-{'0' * 32}")
    assert missing.value.status_code == 404
    with pytest.raises(ApiError) as unauthorized, Client(stack.url, "wrong-key") as stranger:
        stranger.runs()
    assert unauthorized.value.status_code == 401
    with pytest.raises(CrucibleError), Client("http://127.0.0.1:9", "k") as nowhere:
        nowhere.runs()


def test_a_run_in_several_requests_with_progress(client: Client) -> None:
    client.config.max_batch_bytes = 300  # a few jobs per request: exercises appends
    specs = [
        JobSpec(
            language="python",
            code=f"print({i} % 3)",
            tests=[Case(stdin="", expected_stdout="0\n")],
            metadata={"task_id": f"task-{i % 2}"},
        )
        for i in range(6)
    ]
    accepted = client.submit_run(specs, {"name": "client"})
    assert len(accepted.job_ids) == 6 and accepted.total_jobs == 6
    seen: list[RunProgress] = []
    run = client.wait_run(accepted.id, seen.append, ks=(1, 2, 3))
    assert [p.done for p in seen] == list(range(7)) and seen[-1].total == 6
    assert run.counts.finished == 6
    assert run.verdicts == {"accepted": 2, "wrong_answer": 4}
    assert run.pass_at_k.keys() == {"pass@1", "pass@2", "pass@3"}
    results = list(client.results(accepted.id))
    assert [job.id for job in results] == accepted.job_ids
    assert [job.verdict for job in results][:3] == [
        Verdict.ACCEPTED,
        Verdict.WRONG_ANSWER,
        Verdict.WRONG_ANSWER,
    ]
    assert results[0].tests is not None and results[0].tests[0].verdict is Verdict.ACCEPTED
    assert accepted.id in [summary.id for summary in client.runs(limit=1000).runs]


def test_streams_resume_by_themselves_after_dropped_connections(
    client: Client, stack: Stack
) -> None:
    specs = [JobSpec(language="python", code=f"print('x' * {200 + i})") for i in range(5)]
    accepted = client.submit_run(specs)
    client.wait_run(accepted.id)
    whole = list(client.run_events(accepted.id))

    port = int(stack.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after_bytes=1500)  # headers and about one event each
    proxy.start()
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", stack.api_key) as cut:
            resumed = list(cut.run_events(accepted.id))
            job_events = list(cut.events(accepted.job_ids[0]))
    finally:
        proxy.stop()
    assert proxy.cuts >= 3  # it really reconnected, several times

    def finished(events: list[Event]) -> list[tuple[str, dict[str, object]]]:
        # Without `url`: it names the host the client used, here the proxy's port.
        return [
            (e.id, e.job().model_dump(exclude={"url"})) for e in events if e.event == "finished"
        ]

    assert finished(resumed) == finished(whole)  # none lost, none twice
    assert resumed[-1].progress().done == 5
    assert job_events[-1].event == "finished" and len({e.id for e in job_events}) == len(job_events)


async def test_async_client(stack: Stack) -> None:
    async with AsyncClient(stack.url, stack.api_key) as client:
        job = await client.run_job(
            JobSpec(language="python", code="print(input())", stdin="hi", limits=Limits())
        )
        assert job.verdict is Verdict.ACCEPTED and job.stdout == "hi\n"
        accepted = await client.submit_run([JobSpec(language="python", code="pass")] * 3)
        run = await client.wait_run(accepted.id)
        assert run.counts.finished == 3 and run.status == "finished"
        assert len([job async for job in client.results(accepted.id)]) == 3


def test_batches_respect_count_and_size() -> None:
    specs = [JobSpec(language="python", code="x" * 100)] * 25
    bodies = list(batch_bodies(specs, {"m": 1}, max_batch_bytes=1000))
    assert len(bodies) > 1 and all(len(body) < 1500 for body in bodies)
    assert sum(body.count(b'"language"') for body in bodies) == 25
    assert b'"limits"' not in bodies[0]  # unset limits stay unset: the gateway's defaults
    with pytest.raises(ValueError):
        list(batch_bodies([], {}, 1000))


def test_batches_are_made_as_they_are_sent() -> None:
    # A run of 100,000 jobs: its specs may come from a generator, and only the batch being
    # sent is in memory, not every request body of the run at once.
    taken = 0

    def specs() -> Iterator[JobSpec]:
        nonlocal taken
        for _ in range(100):
            taken += 1
            yield JobSpec(language="python", code="x" * 100)

    bodies = batch_bodies(specs(), {}, max_batch_bytes=1000)
    first = next(bodies)
    assert first.count(b'"language"') < 10 and taken == first.count(b'"language"') + 1
    assert sum(body.count(b'"language"') for body in bodies) + first.count(b'"language"') == 100


def test_a_run_sent_in_batches_keeps_none_of_them_once_sent(client: Client) -> None:
    # httpx's request and response refer to each other: a batch given to it as `content`
    # stayed in memory until the garbage collector ran, which bytes do not make it do (a
    # 100,000-sample eval's client held ~380 MB of batches it had sent).
    client.config.max_batch_bytes = 256 * 1024
    padding = "#" + "x" * 50_000 + "\n"
    specs = (JobSpec(language="python", code=padding + f"print({i})") for i in range(40))
    gc.collect()
    tracemalloc.start()
    try:
        accepted = client.submit_run(specs)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(accepted.job_ids) == 40
    assert kept < 2 * client.config.max_batch_bytes  # ~2 MB were sent, in 8 batches


def test_a_plain_http_client_loads_no_ca_bundle_and_trusts_no_certificate() -> None:
    plain = ClientConfig.create("http://127.0.0.1:8080", "k", 5.0).verify
    assert isinstance(plain, ssl.SSLContext)
    assert plain.verify_mode is ssl.CERT_REQUIRED and plain.check_hostname
    assert plain.cert_store_stats()["x509_ca"] == 0
    assert ClientConfig.create("HTTPS://crucible.example", "k", 5.0).verify is True
