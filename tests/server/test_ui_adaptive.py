"""The dashboard's adaptive-program and pool pages: arms with their traffic shares, reward over time;
pools only for an ``admin`` key."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from server_support import QA_SPEC

from conftest import Live
from dspex.modules import ToolRegistry
from dspex.runtime.app import App
from dspex.settings import Settings
from dspex.testing import ScriptedEngine
from dspex.variables import Bindings, Variable, VariableSpace, bind
from dspex.variables.spacefile import space_document


def answered(inputs: dict[str, Any], outputs: dict[str, Any]) -> float:
    return 1.0 if outputs.get("answer") else 0.0


@pytest.fixture
def dspex_app(database_url: str) -> Iterator[App]:
    tools = ToolRegistry()
    tools.add(answered, name="answered")
    with App(
        Settings(database_url=database_url), lm=ScriptedEngine({"answer": "4"}).lm(), tools=tools
    ) as app:
        app.programs.register("qa", QA_SPEC)
        yield app


@pytest.fixture
def browser_of(live: Live) -> Iterator[Callable[[str], httpx.Client]]:
    clients: list[httpx.Client] = []

    def log_in(key: str) -> httpx.Client:
        client = live.client()
        clients.append(client)
        page = client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        assert client.post("/ui/login", data={"csrf": token.group(1), "key": key}).status_code == 303
        return client

    yield log_in
    for client in clients:
        client.close()


def test_adaptive_program_page_shows_arms_shares_and_reward(
    dspex_app: App, admin: httpx.Client, admin_key: str, browser_of: Callable[[str], httpx.Client]
) -> None:
    space = space_document(
        VariableSpace([Variable.float("temperature", 0.0, 1.0)]), Bindings([bind.temperature("temperature")])
    )
    started = admin.post(
        "/v1/programs/qa/adaptive",
        json={
            "name": "qa-live",
            "space": space,
            "arms": [{"temperature": 0.1}, {"temperature": 0.9}],
            "metric": "answered",
            "policy": {"seed": 1},
        },
    )
    assert started.status_code == 201, started.text
    for _ in range(8):
        served = admin.post("/v1/programs/qa/adaptive/qa-live/runs", json={"inputs": {"question": "2 + 2?"}})
        assert served.status_code == 200, served.text
    dspex_app.flush()
    client = browser_of(admin_key)
    listing = client.get("/ui/adaptive")
    assert '<a href="/ui/adaptive/qa-live">qa-live</a>' in listing.text
    page = client.get("/ui/adaptive/qa-live")
    assert page.status_code == 200
    arms = re.findall(r'<td class="num">([\d.]+)%</td>\s*<td class="num">(\d+)</td>', page.text)
    assert len(arms) == 2
    assert sum(int(served) for _, served in arms) == 8
    assert abs(sum(float(share) for share, _ in arms) - 100.0) < 0.2
    data = re.search(r'<script type="application/json" id="reward-data">(.*?)</script>', page.text, re.S)
    assert data is not None
    assert '"mean_reward": 1.0' in data.group(1)
    assert client.get("/ui/adaptive/nope").status_code == 404
    _draw_in_chromium(
        str(client.base_url).rstrip("/"), admin_key, "/ui/adaptive/qa-live", "#arms", "adaptive.png"
    )


def _draw_in_chromium(live_url: str, key: str, path: str, ready: str, screenshot: str) -> None:
    """The page at ``path`` in Chromium once ``ready`` shows, with no script error (skipped only without
    chromium); an adaptive page's reward chart must draw. With ``DSPEX_UI_SCREENSHOTS=DIR`` it is saved
    there as ``screenshot``."""
    import os

    from test_ui_browser import ARGS, CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(f"{live_url}/ui/login?next={path}")
            page.fill("input[name=key]", key)
            page.click("button[type=submit]")
            page.wait_for_url(f"**{path}")
            page.locator(ready).wait_for()
            keep = os.environ.get("DSPEX_UI_SCREENSHOTS")
            if keep:
                page.screenshot(path=os.path.join(keep, screenshot), full_page=True)
            if path.startswith("/ui/adaptive/"):
                drawn = page.locator("#reward-chart").get_attribute("height")
                assert drawn is not None  # Chart.js sized the canvas: the chart was built
            assert problems == []
        finally:
            browser.close()


def test_pools_page_is_for_admin_keys_only(
    dspex_app: App, live: Live, admin_key: str, browser_of: Callable[[str], httpx.Client]
) -> None:
    _, reader = dspex_app.keys.create("reader", ["programs:read"])
    reading = browser_of(reader)
    assert "/ui/pools" not in reading.get("/ui").text  # not in the navigation
    assert reading.get("/ui/pools").status_code == 403
    admin = browser_of(admin_key)
    assert 'href="/ui/pools"' in admin.get("/ui").text
    page = admin.get("/ui/pools")
    assert page.status_code == 200
    assert 'id="no-pools"' in page.text


def test_breakers_and_limits_page_is_for_admin_keys_and_shows_each_breaker(
    dspex_app: App, admin_key: str, browser_of: Callable[[str], httpx.Client]
) -> None:
    _, reader = dspex_app.keys.create("reader", ["programs:read"])
    reading = browser_of(reader)
    assert "/ui/lms" not in reading.get("/ui").text
    assert reading.get("/ui/lms").status_code == 403
    admin = browser_of(admin_key)
    empty = admin.get("/ui/lms")
    assert empty.status_code == 200
    assert 'id="no-breakers"' in empty.text
    dspex_app.run("qa", {"question": "2+2?"})  # one LM call through the resilience layer: its breaker
    breakers = dspex_app.resilience.status()["breakers"]
    assert breakers
    page = admin.get("/ui/lms")
    assert 'id="no-breakers"' not in page.text
    for breaker in breakers:
        assert f"<code>{breaker['endpoint']}</code>" in page.text
    assert ">closed<" in page.text
    live_url = str(admin.base_url).rstrip("/")
    _draw_in_chromium(live_url, admin_key, "/ui/lms", "table.breakers", "breakers.png")
