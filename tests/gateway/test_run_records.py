"""A run's job records live in pages (one KV value per page): every job is still found, by
its own tenant only, and a run refused part way leaves no page, job list or run behind."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bus import JobMessage, JobSpec, connect, new_job_id, page_of, paged_job_id, utc_now
from bus import subjects as s
from gateway.run_schemas import MAX_JOBS_PER_REQUEST
from gateway.run_submit import RECORDS_PER_PAGE, PreparedJobs, _Payloads, prepare_jobs
from gateway.settings import GatewaySettings
from tests.stack import Stack, running_stack
from tests.tenants import tenant_key

OK = {"language": "python", "code": "print(1)"}
_TOTAL_CAP = 1100  # a window of jobs (1,000) fits, the next does not


def page_id(job_id: str) -> str:
    paged = page_of(job_id)
    assert paged is not None, job_id
    return paged[0]


def test_paged_ids_name_their_page_and_place() -> None:
    page_id = new_job_id()
    assert page_of(paged_job_id(page_id, 0)) == (page_id, 0)
    assert page_of(paged_job_id(page_id, 99)) == (page_id, 99)
    assert page_of(page_id) is None  # a job of its own (POST /v1/jobs)
    with pytest.raises(ValueError, match="at most"):
        paged_job_id(page_id, 16**4)


def test_large_metadata_starts_new_pages() -> None:
    # Beyond the default cap of metadata (16 KiB), as an operator may allow.
    specs = [JobSpec(**OK, metadata={"blob": "x" * 300_000})] * 10 + [JobSpec(**OK)] * 250
    settings = GatewaySettings(max_metadata_bytes=400_000)
    jobs = prepare_jobs(specs, "r-" + "0" * 32, "local", settings)
    sizes = [len(page.positions) for page in jobs.pages]
    assert sum(sizes) == 260 and max(sizes) == RECORDS_PER_PAGE
    assert sizes[:4] == [3, 3, 3, RECORDS_PER_PAGE]  # at most ~1 MiB of metadata a page
    assert len(set(jobs.job_ids)) == 260


def test_a_job_message_is_what_its_model_writes() -> None:
    spec = JobSpec(**OK, tests=[{"stdin": "é\n", "expected_stdout": '"q"'}], metadata={"k": [1]})
    jobs = PreparedJobs("r-" + "1" * 32, 'ten"ant', utc_now(), [spec], [], [])
    job_id = paged_job_id(new_job_id(), 7)
    expected = JobMessage(
        job_id=job_id,
        run_id=jobs.run_id,
        tenant=jobs.tenant,
        spec=spec,
        submitted_at=jobs.submitted_at,
    )
    assert JobMessage.model_validate_json(_Payloads(jobs).payload(job_id, spec)) == expected


def test_every_job_of_a_multi_page_run_is_found(stack: Stack) -> None:
    jobs = [{**OK, "metadata": {"task_id": f"t/{i}"}} for i in range(2 * RECORDS_PER_PAGE + 5)]
    response = httpx.post(
        f"{stack.url}/v1/runs", json={"jobs": jobs}, headers=stack.headers(), timeout=60
    )
    assert response.status_code == 202, response.text
    run = response.json()
    ids = run["job_ids"]
    assert len(set(ids)) == len(jobs)
    assert len({page_id(job_id) for job_id in ids}) == 3
    with tenant_key(stack, "other", "o3") as other, httpx.Client(base_url=stack.url) as client:
        for index in (0, RECORDS_PER_PAGE - 1, RECORDS_PER_PAGE, len(jobs) - 1):
            view = client.get(f"/v1/jobs/{ids[index]}", headers=stack.headers()).json()
            assert (view["id"], view["run_id"]) == (ids[index], run["id"])
            assert view["metadata"] == {"task_id": f"t/{index}"} and view["trace_id"]
            assert client.get(f"/v1/jobs/{ids[index]}", headers=other).status_code == 404
        beyond = paged_job_id(page_id(ids[-1]), 5)  # the last page holds 5 jobs: 0 to 4
        assert client.get(f"/v1/jobs/{beyond}", headers=stack.headers()).status_code == 404
        cancelled = client.post(f"/v1/runs/{run['id']}/cancel", headers=stack.headers())
        assert cancelled.json()["jobs"] == len(jobs)


@pytest.fixture(scope="module")
def small_queue_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Room for few jobs in all, but many for one tenant: a run passes the tenant's check,
    then JetStream refuses its jobs part way."""
    env = {"CRUCIBLE_STREAMS__MAX_QUEUED_TOTAL": str(_TOTAL_CAP)}
    with running_stack(tmp_path_factory.mktemp("small"), workers=1, env=env) as stack:
        yield stack


async def live_record_keys(stack: Stack) -> list[str]:
    """Keys of the `jobs` bucket whose newest entry is a value, not a purge."""
    nc = await connect(stack.nats(), "debug", "test-records")
    try:
        js = nc.jetstream()
        info = await js.stream_info(s.JOBS_BUCKET_STREAM, subjects_filter=f"$KV.{s.JOBS_BUCKET}.>")
        live = []
        for subject in info.state.subjects or {}:
            last = await js.get_last_msg(s.JOBS_BUCKET_STREAM, subject, direct=True)
            if not (last.headers or {}).get("KV-Operation"):
                live.append(subject)
        return live
    finally:
        await nc.close()


async def test_a_run_refused_part_way_leaves_nothing_visible(small_queue_stack: Stack) -> None:
    stack = small_queue_stack
    sleeper = {
        "language": "python",
        "code": "import time; time.sleep(60)",
        "limits": {"wall_time_s": 60},
    }
    async with httpx.AsyncClient(
        base_url=stack.url, headers=stack.headers(), timeout=120
    ) as client:
        runs_before = (await client.get("/v1/runs")).json()["runs"]
        refused = await client.post("/v1/runs", json={"jobs": [sleeper] * 3000})
        # 429 would be right; nats-py 2.16 raises inside its reply handler for this refusal
        # (code 503), so the publishes time out and the answer is 503: both take all back.
        assert refused.status_code in (429, 503), refused.text
        assert "nothing was stored" in refused.json()["detail"]
        assert (await client.get("/v1/runs")).json()["runs"] == runs_before
    assert await live_record_keys(stack) == []  # every record page taken back


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own, stopped with its queue full rather than drained."""
    with running_stack(tmp_path_factory.mktemp("idle"), workers=1) as stack:
        yield stack


def test_a_run_of_the_largest_size_is_accepted_and_found(idle_stack: Stack) -> None:
    stack, jobs = idle_stack, MAX_JOBS_PER_REQUEST
    body = {"jobs": [{**OK, "metadata": {"task_id": f"t/{i % 100}"}} for i in range(jobs)]}
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=120) as client:
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run = response.json()
        assert run["total_jobs"] == jobs and len(set(run["job_ids"])) == jobs
        assert len({page_id(job_id) for job_id in run["job_ids"]}) == jobs // RECORDS_PER_PAGE
        last = client.get(f"/v1/jobs/{run['job_ids'][-1]}").json()
        assert last["metadata"] == {"task_id": f"t/{(jobs - 1) % 100}"}
        view = client.get(f"/v1/runs/{run['id']}").json()
        assert view["total_jobs"] == jobs
        assert sum(view["counts"].values()) == jobs
