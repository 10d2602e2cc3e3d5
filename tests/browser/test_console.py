"""The web console in a real browser (Debian's Chromium through Playwright): a job's output
streams in order, survives a gateway restart without duplicates, shows HTML as text; a run's
progress reaches 100%. Each test saves a screenshot under `test-output/screenshots/`."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.stack import Stack, running_stack

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
JAEGER = "http://jaeger.example:16686"
SCREENSHOTS = Path(os.environ.get("CRUCIBLE_TEST_OUTPUT", "test-output")) / "screenshots"
_TIMEOUT_MS = 60_000
expect.set_options(timeout=_TIMEOUT_MS)  # a limit on waiting, never a performance claim


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module's own, whose gateway a test may kill, linking to a Jaeger."""
    env = {"CRUCIBLE_JAEGER_URL": JAEGER}
    with running_stack(tmp_path_factory.mktemp("browser"), workers=1, env=env) as running:
        yield running


def console(browser: Browser, stack: Stack) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(_TIMEOUT_MS)
    page.goto(stack.url)
    page.fill("#api-key", stack.api_key)
    page.click("#key-form button")
    expect(page.locator("#key-status")).to_have_text("key accepted")
    expect(page.locator("#runtime option[value=python]")).to_have_count(1)
    return page


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def run_code(page: Page, code: str, wall_time_s: int = 10) -> None:
    page.select_option("#runtime", "python")
    page.fill("#wall-time", str(wall_time_s))
    page.fill("#code", code)
    page.click("#submit-job")


TICKS = (
    "import time\nfor i in range({n}):\n    print('tick', i, flush=True)\n    time.sleep({pause})\n"
)


def expected_ticks(n: int) -> str:
    return "".join(f"tick {i}\n" for i in range(n))


def test_a_job_streams_its_lines_in_order_and_shows_the_verdict(
    browser: Browser, stack: Stack
) -> None:
    page = console(browser, stack)
    run_code(page, TICKS.format(n=5, pause=0.5))
    # Live: the first line is there while the job still runs.
    expect(page.locator("#output")).to_contain_text("tick 0")
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.locator("#verdict")).to_have_text("accepted")
    assert page.text_content("#output") == expected_ticks(5)
    expect(page.locator("#exit-code")).to_have_text("0")
    wall = page.text_content("#wall") or ""
    assert wall.endswith(" s") and float(wall.removesuffix(" s")) > 2.0  # five half-second naps
    assert page.text_content("#memory-peak").endswith(" MB")
    screenshot(page, "job-streamed")
    page.close()


def test_output_that_looks_like_html_is_shown_as_text(browser: Browser, stack: Stack) -> None:
    page = console(browser, stack)
    payload = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'><b>bold</b>"
    run_code(page, f"print({payload!r})")
    expect(page.locator("#verdict")).to_have_text("accepted")
    assert page.text_content("#output") == payload + "\n"
    assert page.locator("#output b, #output img, #output script").count() == 0
    assert page.evaluate("window.pwned") is None
    screenshot(page, "html-as-text")
    page.close()


def test_output_completes_without_duplicates_across_a_gateway_restart(
    browser: Browser, own_stack: Stack
) -> None:
    page = console(browser, own_stack)
    run_code(page, TICKS.format(n=20, pause=0.3))
    expect(page.locator("#output")).to_contain_text("tick 2")
    (gateway,) = own_stack.processes("crucible gateway")
    os.kill(gateway, signal.SIGKILL)  # `crucible up` starts a new one; the page reconnects
    expect(page.locator("#verdict")).to_have_text("accepted")
    assert page.text_content("#output") == expected_ticks(20)
    assert gateway not in own_stack.processes("crucible gateway")
    job_id = page.text_content("#job-id")
    job = httpx.get(f"{own_stack.url}/v1/jobs/{job_id}", headers=own_stack.headers()).json()
    expect(page.locator("#trace-link")).to_have_attribute(
        "href", f"{JAEGER}/trace/{job['trace_id']}"
    )
    screenshot(page, "job-across-gateway-restart")
    page.close()


def test_a_runs_progress_and_pass_at_k_reach_the_end(browser: Browser, stack: Stack) -> None:
    jobs = [
        {
            "language": "python",
            "code": "import time; time.sleep(0.5); print(1)",  # still running when opened
            "metadata": {"task_id": f"t{i % 2}"},
        }
        for i in range(10)
    ]
    response = httpx.post(f"{stack.url}/v1/runs", json={"jobs": jobs}, headers=stack.headers())
    assert response.status_code == 202
    run_id = response.json()["id"]
    page = console(browser, stack)
    seen: list[int] = []
    page.expose_function("progressSeen", lambda value: seen.append(int(value)))
    page.evaluate(
        "new MutationObserver(() => progressSeen(document.querySelector('#run-progress')"
        ".value)).observe(document.querySelector('#run-done'), {childList: true})"
    )
    page.fill("#run-id", run_id)
    page.click("#run-form button")
    expect(page.locator("#run-done")).to_have_text("10 / 10 (100%)")
    expect(page.locator("#run-state")).to_have_text("finished")
    expect(page.locator("#run-verdicts tbody tr")).to_have_text(["accepted10"])
    expect(page.locator("#run-passk")).to_contain_text("pass@1 = 1.000")
    assert page.evaluate("document.querySelector('#run-progress').value") == 10
    assert seen == sorted(seen), f"the progress bar went backwards: {seen}"
    screenshot(page, "run-progress")
    page.close()
