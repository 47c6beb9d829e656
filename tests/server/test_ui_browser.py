"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright): log in with a
key, a read-only key sees no promote button, a pipeline run's waterfall, start an optimization from the
form and watch its trials arrive live, promote the version it produced, cancel a job.

Skipped, saying why, only when ``/usr/bin/chromium`` is missing (``.ci/run`` installs it). Screenshots of
each page go to the test's temporary directory, and to ``$DSPEX_UI_SCREENSHOTS`` when that is set (how
``docs/ui/`` was made).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest

from conftest import Live
from dspex.jobs.worker import Worker
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine
from dspex.testing.server import SimServer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SPACE = """{"variables": {"v": 1, "variables": [{"name": "temperature", "kind": "float", "low": 0.0,
 "high": 1.0, "step": 0.5}]}, "bindings": {"version": 1, "bindings": [{"variable": "temperature",
 "target": "lm_setting", "setting": "temperature", "predictors": "*"}]}}"""

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], None]:
    """``shot(page, name)``: a full-page PNG, kept in $DSPEX_UI_SCREENSHOTS too when set."""
    keep = os.environ.get("DSPEX_UI_SCREENSHOTS")

    def shot(page: Any, name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5000  # a rendered page, not a blank one
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    return shot


@pytest.fixture
def sim_app(database_url: str, settings_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    if not database_url.startswith("sqlite"):
        pytest.skip("the browser tests read the store through the same code on SQLite only (time budget)")
    monkeypatch.setenv("DSPEX_DATABASE_URL", database_url)
    with App(Settings.load()) as app:
        yield app


def _log_in(browser: Any, live: Live, key: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    # Any script error or refused load (the pages' content security policy) fails the test at the end.
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.problems = problems
    page.goto(f"{live.url}/ui")
    assert "/ui/login" in page.url
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/ui")
    return page


def _pipeline_run(app: App) -> str:
    from dspex.pipeline import ModuleStep, Pipeline

    engine = ScriptedEngine(
        {"answer": lambda inputs: f"answer to {inputs['question']}", "summary": lambda _inputs: "short"}
    )
    pipeline = Pipeline(
        [
            ModuleStep(dspy.Predict("question -> answer"), name="answerer"),
            ModuleStep(dspy.Predict("answer -> summary"), name="summarizer"),
        ],
        name="qa-pipe",
    )
    app.run(pipeline, {"question": "what is a waterfall?"}, lm=engine.lm())
    app.flush(10)
    return app.executions.find()[0].id


def test_the_dashboard_in_chromium(
    browser: Any,
    sim_app: App,
    settings_sim: SimServer,
    serve: Callable[..., Live],
    shots: Callable[[Any, str], None],
) -> None:
    live = serve(sim_app)
    _, admin = sim_app.keys.create("ops", ["admin"])
    _, reader = sim_app.keys.create("reader", ["programs:read"])
    sim_app.programs.register(
        "qa", {"module": "predict", "signature": "question -> answer"}, description="answers questions"
    )
    rows = [
        {**row, "part": "train" if i < 4 else "dev"} for i, row in enumerate(settings_sim.task.dicts()[:12])
    ]
    sim_app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
    for row in rows[:4]:
        sim_app.run("qa", {"question": row["question"]})
    execution_id = _pipeline_run(sim_app)

    # Log in with a key; the overview and the executions list.
    page = _log_in(browser, live, admin)
    page.wait_for_selector("#programs-today")
    assert page.locator("#programs-today tbody tr").count() >= 1
    shots(page, "overview")
    page.click("header nav >> text=Executions")
    page.wait_for_selector("#executions tbody tr")
    assert page.locator("#executions tbody tr").count() == 5
    # A run made now appears at the top without a reload (server-sent events).
    sim_app.run("qa", {"question": rows[5]["question"]})
    # (Locators, not wait_for_function: the pages' policy forbids evaluating strings as script.)
    page.locator("#executions tbody tr").nth(5).wait_for()
    assert page.locator("#executions tbody tr").count() == 6
    newest = page.locator("#executions tbody tr").first
    assert newest.locator(".badge.succeeded").count() == 1  # swapped in as markup, not as text
    assert '"' not in page.locator("#executions tbody").inner_text()
    shots(page, "executions")

    # A pipeline run's waterfall: its steps and LM calls, with the messages behind a click.
    page.goto(f"{live.url}/ui/executions/{execution_id}")
    bars = page.locator("#waterfall details")
    assert bars.count() >= 4
    assert page.locator("#waterfall .kind-lm").count() == 2
    summary = page.locator("#waterfall .kind-lm summary").first
    summary.click()
    assert page.locator("#waterfall .kind-lm .message").first.is_visible()
    assert "answerer" in page.locator("#waterfall").inner_text()
    shots(page, "execution")

    # Start an optimization from the form; trials arrive live while a worker runs it.
    page.goto(f"{live.url}/ui/optimizations")
    page.select_option("select[name=program]", "qa")
    page.select_option("select[name=dataset]", "qa-set")
    page.fill("input[name=n_trials]", "3")
    page.fill("textarea[name=space]", SPACE)
    page.click("#start-optimization button[type=submit]")
    page.wait_for_url("**/ui/optimizations/opt-*")
    assert page.locator("#opt-live").get_attribute("data-live") == "true"
    assert page.locator("#trials tbody tr").count() == 0
    assert page.locator("#importance-box").get_attribute("hx-get") is not None  # polled while it runs
    worker = Worker(sim_app, lease_s=10, poll_s=0.05)
    thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": False}, daemon=True)
    thread.start()
    try:
        page.locator("#trials tbody tr.live-trial").nth(2).wait_for(timeout=60_000)
        page.locator("#opt-status.succeeded").wait_for(timeout=60_000)
    finally:
        worker.stop()
        thread.join(30)
    assert page.locator("#trials tbody tr.live-trial").count() == 3
    assert page.locator("#opt-result").inner_text() != "\u2013"  # the result version, not the dash
    page.reload()  # the page as a later visitor sees it: trials from the store, importance computed
    assert page.locator("#trials tbody tr").count() == 3
    page.locator("#importance").wait_for()
    shots(page, "optimization")
    optimization_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#importance-box").get_attribute("hx-get") is None  # ended: no more polling
    fragment = page.request.get(f"{live.url}/ui/optimizations/{optimization_id}/importance")
    assert fragment.ok
    assert 'id="importance-box"' in fragment.text()
    assert "hx-get" not in fragment.text()
    result = sim_app.optimizations.get(optimization_id).result_version_id
    assert result is not None

    # Promote the version the optimization produced, from the program page.
    page.goto(f"{live.url}/ui/programs/qa")
    page.locator(f"tr[data-version='{result}'] button.promote").click()
    page.wait_for_selector(f"tr[data-version='{result}'] .badge.production")
    assert sim_app.programs.resolve("qa").id == result
    assert page.locator("#diff").count() == 1
    shots(page, "program")

    # Cancel a queued job.
    job = sim_app.jobs.enqueue("evaluate", {"program": "qa"})
    page.goto(f"{live.url}/ui/jobs")
    page.locator(f"tr[data-job='{job.id}'] button.cancel").click()
    page.wait_for_selector(f"tr[data-job='{job.id}'] .badge.cancelled")
    assert sim_app.jobs.get(job.id).status == "cancelled"  # type: ignore[union-attr]
    shots(page, "jobs")
    page.goto(f"{live.url}/ui/datasets/qa-set")
    assert page.locator("#examples tbody tr").count() == 12
    shots(page, "dataset")
    assert page.problems == []
    page.context.close()

    # A read-only key: the same program page has no promote or rollback button.
    page = _log_in(browser, live, reader)
    page.goto(f"{live.url}/ui/programs/qa")
    page.wait_for_selector("#versions")
    assert page.locator("button.promote").count() == 0
    assert page.locator("button.rollback").count() == 0
    page.goto(f"{live.url}/ui/optimizations")
    assert page.locator("#start-optimization").count() == 0
    page.context.close()
