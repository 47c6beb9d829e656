"""The dashboard over HTTP (a real uvicorn server, httpx as the browser): login and the session cookie,
CSRF, scopes hiding and refusing actions, each page's content, filters and paging, escaping."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import Live
from dspex.runtime.app import App
from dspex.server.ui.session import SESSION_COOKIE

Login = Callable[[Live, str], httpx.Client]
READ_ONLY = ["programs:read"]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html[:500]
    return found.group(1)


@pytest.fixture
def login() -> Iterator[Callable[[Live, str], httpx.Client]]:
    """``login(live, key)``: a client logged in to the dashboard (closed at teardown)."""
    clients: list[httpx.Client] = []

    def start(live: Live, key: str) -> httpx.Client:
        client = live.client()
        clients.append(client)
        return _login(client, key)

    yield start
    for client in clients:
        client.close()


def _login(client: httpx.Client, key: str) -> httpx.Client:
    page = client.get("/ui/login")
    assert page.status_code == 200
    response = client.post("/ui/login", data={"csrf": _csrf(page.text), "key": key, "next": "/ui/programs"})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/programs"
    return client


@pytest.fixture
def qa_app(dspex_app: App) -> App:
    dspex_app.programs.register("qa", {"module": "predict", "signature": "question -> answer"})
    for question in ("one", "two", "<script>alert(1)</script>"):
        dspex_app.run("qa", {"question": question})
    dspex_app.flush(10)
    return dspex_app


def test_pages_need_a_login_and_the_cookie_holds_no_key(live: Live, qa_app: App, login: Login) -> None:
    _, key = qa_app.keys.create("viewer", READ_ONLY)
    with live.client() as anonymous:
        response = anonymous.get("/ui/executions")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=/ui/executions"
    with live.client(cookies={SESSION_COOKIE: "e30.deadbeef"}) as forger:
        assert forger.get("/ui").status_code == 303  # a cookie not signed by this server is no session
    client = login(live, key)
    cookie = next(c for c in client.cookies.jar if c.name == SESSION_COOKIE)
    assert key not in cookie.value
    assert key.split("_", 2)[2] not in cookie.value  # the whole secret (it may hold "_" itself)
    page = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf": _csrf(page.text), "key": key, "next": "https://evil/"})
    header = answer.headers["set-cookie"].lower()
    assert "httponly" in header
    assert "samesite=strict" in header
    assert "path=/ui" in header
    assert answer.headers["location"] == "/ui"  # never sent to another site after login
    assert client.get("/ui").status_code == 200


def test_login_refuses_bad_keys_and_a_missing_token(live: Live, qa_app: App) -> None:
    with live.client() as client:
        page = client.get("/ui/login")
        token = _csrf(page.text)
        bad = client.post("/ui/login", data={"csrf": token, "key": "hunter2"})
        assert bad.status_code == 401
        assert "keys look like dspex_" in bad.text
        page = client.get("/ui/login")
        unknown = client.post(
            "/ui/login", data={"csrf": _csrf(page.text), "key": "dspex_0123456789ab_" + "x" * 40}
        )
        assert unknown.status_code == 401
        assert "Unknown or revoked" in unknown.text
        _, key = qa_app.keys.create("viewer", READ_ONLY)
        forged = client.post("/ui/login", data={"csrf": "not-the-cookie", "key": key})
        assert forged.status_code == 403  # the double-submit token does not match
        assert SESSION_COOKIE not in forged.headers.get("set-cookie", "")
        _, runner = qa_app.keys.create("runner", ["runs:execute"])
        page = client.get("/ui/login")
        no_read = client.post("/ui/login", data={"csrf": _csrf(page.text), "key": runner})
        assert no_read.status_code == 403
        assert "programs:read" in no_read.text


def test_a_read_only_key_sees_no_promote_button_and_its_post_is_refused(
    live: Live, qa_app: App, login: Login
) -> None:
    draft = qa_app.programs.register(
        "qa", {"module": "chain_of_thought", "signature": "question -> answer"}, replace=True
    )
    _, key = qa_app.keys.create("viewer", READ_ONLY)
    client = login(live, key)
    page = client.get("/ui/programs/qa")
    assert page.status_code == 200
    assert "Promote" not in page.text
    assert "Roll back" not in page.text
    refused = client.post("/ui/programs/qa/promote", data={"csrf": _csrf(page.text), "version": draft.id})
    assert refused.status_code == 403
    assert "programs:promote" in refused.text
    assert qa_app.programs.repository.get_version(draft.id).status != "production"  # type: ignore[union-attr]
    jobs = client.get("/ui/jobs")
    assert "Cancel" not in jobs.text


def test_promote_and_rollback_need_the_csrf_token(live: Live, qa_app: App, login: Login) -> None:
    first = qa_app.programs.promote("qa", qa_app.programs.repository.versions("qa")[0].id)
    draft = qa_app.programs.register(
        "qa", {"module": "chain_of_thought", "signature": "question -> answer"}, replace=True
    )
    _, key = qa_app.keys.create("release", ["programs:read", "programs:promote"])
    client = login(live, key)
    page = client.get("/ui/programs/qa")
    assert page.text.count('class="promote"') == 1  # every version but production
    # The diff of production against the draft: the module's structure changed.
    assert 'id="diff"' in page.text
    assert "structure" in page.text
    missing = client.post("/ui/programs/qa/promote", data={"version": draft.id})
    assert missing.status_code == 403
    assert "CSRF" in missing.text
    promoted = client.post("/ui/programs/qa/promote", data={"csrf": _csrf(page.text), "version": draft.id})
    assert promoted.status_code == 303
    assert qa_app.programs.resolve("qa").id == draft.id
    unknown = client.post("/ui/programs/qa/promote", data={"csrf": _csrf(page.text), "version": "nope"})
    assert unknown.status_code == 400
    assert "version=&#39;nope&#39; is not a version" in unknown.text
    rolled = client.post("/ui/programs/qa/rollback", data={"csrf": _csrf(page.text)})
    assert rolled.status_code == 303
    assert qa_app.programs.resolve("qa").id == first.id


def test_a_revoked_key_ends_its_sessions(live: Live, qa_app: App, login: Login) -> None:
    record, key = qa_app.keys.create("viewer", READ_ONLY)
    client = login(live, key)
    assert client.get("/ui/executions").status_code == 200
    qa_app.keys.revoke(record.id)
    assert client.get("/ui/executions").status_code == 303


def test_executions_filters_search_paging_and_escaping(
    live: Live, qa_app: App, admin_key: str, login: Login
) -> None:
    client = login(live, admin_key)
    page = client.get("/ui/executions")
    assert page.status_code == 200
    assert page.text.count('<tr class="status-succeeded">') == 3
    assert "3 of 3" in page.text
    assert 'rel="next"' not in page.text  # no older page
    assert "sse-connect" in page.text  # the first page follows new runs live
    one = qa_app.executions.find()[0]
    found = client.get("/ui/executions", params={"q": one.id[:8]})
    assert found.text.count("<tr class=") == 1
    none = client.get("/ui/executions", params={"status": "failed"})
    assert "No executions match" in none.text
    cached = client.get("/ui/executions", params={"cache": "hit"})
    assert "No executions match" in cached.text
    models = list(one.usage or {})
    assert models  # the run called its LM: usage is by model
    by_model = client.get("/ui/executions", params={"model": models[0]})
    assert by_model.text.count('<tr class="status-succeeded">') == 3
    other_model = client.get("/ui/executions", params={"model": "openai/not-called"})
    assert "No executions match" in other_model.text
    bad = client.get("/ui/executions", params={"status": "exploded"})
    assert bad.status_code == 400
    assert "status must be one of" in bad.text
    bad_time = client.get("/ui/executions", params={"since": "yesterday"})
    assert bad_time.status_code == 400
    assert "since must be a date-time" in bad_time.text
    bad_page = client.get("/ui/executions", params={"before": "last tuesday"})
    assert bad_page.status_code == 400
    assert "before must be a page cursor" in bad_page.text
    for _ in range(50):
        qa_app.run("qa", {"question": "more"})
    qa_app.flush(10)
    first = client.get("/ui/executions", params={"program": "qa"})
    assert first.text.count("<tr class=") == 50
    assert "50 of 53" in first.text
    older = re.search(r'<a rel="next" href="\?([^"]+)"', first.text)
    assert older is not None
    second = client.get("/ui/executions?" + older.group(1).replace("&amp;", "&"))
    assert second.text.count("<tr class=") == 3
    assert "sse-connect" not in second.text  # only the newest page follows live
    assert 'rel="next"' not in second.text
    first_ids = set(re.findall(r"/ui/executions/([0-9a-f-]{36})", first.text))
    second_ids = set(re.findall(r"/ui/executions/([0-9a-f-]{36})", second.text))
    assert len(first_ids) == 50
    assert len(second_ids) == 3
    assert not first_ids & second_ids
    newer = re.search(r'<a rel="prev" href="\?([^"]+)"', second.text)
    assert newer is not None
    back = client.get("/ui/executions?" + newer.group(1).replace("&amp;", "&"))
    assert set(re.findall(r"/ui/executions/([0-9a-f-]{36})", back.text)) == first_ids
    assert "sse-connect" in back.text  # back on the newest page
    # What a run carried is shown as text, never as markup.
    evil = next(r for r in qa_app.executions.find(limit=100) if "script" in r.inputs["question"])
    shown = client.get(f"/ui/executions/{evil.id}")
    assert "<script>alert(1)</script>" not in shown.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text


def test_one_execution_shows_its_waterfall_usage_and_feedback(
    live: Live, qa_app: App, admin_key: str, login: Login
) -> None:
    record = qa_app.executions.find(with_trace=True)[0]
    qa_app.feedback(record.id, score=0.5, comment="close enough")
    client = login(live, admin_key)
    page = client.get(f"/ui/executions/{record.id[:10]}")
    assert page.status_code == 200
    assert 'id="waterfall"' in page.text
    assert page.text.count('class="span kind-') == len(record.trace["spans"])  # type: ignore[index]
    assert "kind-lm" in page.text
    assert "Messages" in page.text
    assert "close enough" in page.text
    assert client.get("/ui/executions/000000000000").status_code == 404


def test_overview_programs_datasets_and_jobs(live: Live, qa_app: App, admin_key: str, login: Login) -> None:
    qa_app.datasets.import_records(
        "qa-set",
        [{"question": "q<b>", "answer": "a"}] * 3 + [{"question": "z", "answer": "b"}],
        inputs=["question"],
    )
    client = login(live, admin_key)
    overview = client.get("/ui")
    assert overview.status_code == 200
    row = re.search(r'<a href="/ui/executions\?program=qa">qa</a></td>\s*<td>(\d+)</td>', overview.text)
    assert row is not None
    assert row.group(1) == "3"
    assert 'data-chart="per-minute"' in overview.text
    policy = overview.headers["content-security-policy"]
    assert "script-src 'self'" in policy  # nothing from another site, no inline script
    assert "frame-ancestors 'none'" in policy
    assert "qa-set" in client.get("/ui/datasets").text
    dataset = client.get("/ui/datasets/qa-set")
    assert dataset.status_code == 200
    assert dataset.text.count("<td>q&lt;b&gt;</td>") == 3
    assert client.get("/ui/datasets/nope").status_code == 404
    assert client.get("/ui/programs/nope").status_code == 404
    programs = client.get("/ui/programs")
    assert '<a href="/ui/programs/qa">qa</a>' in programs.text


def test_cancel_a_queued_job(live: Live, qa_app: App, admin_key: str, login: Login) -> None:
    job = qa_app.jobs.enqueue("evaluate", {"program": "qa"})
    client = login(live, admin_key)
    page = client.get("/ui/jobs")
    assert f'data-job="{job.id}"' in page.text
    assert 'class="cancel"' in page.text
    cancelled = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page.text)})
    assert cancelled.status_code == 303
    assert qa_app.jobs.get(job.id).status == "cancelled"  # type: ignore[union-attr]
    again = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page.text)})
    assert again.status_code == 409


def test_assets_are_served_from_the_package(live: Live) -> None:
    with live.client() as client:
        for name in ("htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js", "chart-4.6.1.umd.min.js"):
            response = client.get(f"/ui/static/vendor/{name}")
            assert response.status_code == 200
            assert len(response.content) > 1000
        assert client.get("/ui/static/dashboard.js").status_code == 200


def test_without_auth_the_dashboard_is_the_local_administrator(dspex_app: App, serve: Any) -> None:
    live = serve(dspex_app, auth=False)
    with live.client() as client:
        page = client.get("/ui/jobs")
        assert page.status_code == 200
        job = dspex_app.jobs.enqueue("evaluate", {"program": "qa"})
        page = client.get("/ui/jobs")
        forged = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "wrong"})
        assert forged.status_code == 403  # forms are still CSRF-checked
        done = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page.text)})
        assert done.status_code == 303


def test_the_optimization_form_queues_trials_at_once_within_bounds(
    live: Live, qa_app: App, admin_key: str, login: Login
) -> None:
    import json

    qa_app.datasets.import_records("qa-set", [{"question": "q", "answer": "a"}] * 3, inputs=["question"])
    space = {
        "variables": {"v": 1, "variables": [{"name": "t", "kind": "float", "low": 0.0, "high": 1.0}]},
        "bindings": {
            "version": 1,
            "bindings": [
                {"variable": "t", "target": "lm_setting", "setting": "temperature", "predictors": "*"}
            ],
        },
    }
    client = login(live, admin_key)
    page = client.get("/ui/optimizations")
    assert 'name="parallel" value="1" min="1" max="64"' in page.text
    fields = {"csrf": _csrf(page.text), "program": "qa", "dataset": "qa-set", "space": json.dumps(space)}
    for bad in ("0", "65", "two", "1.5"):
        refused = client.post(
            "/ui/optimizations", data={**fields, "n_trials": "4", "seed": "0", "parallel": bad}
        )
        assert refused.status_code == 422, bad
        assert "parallel must be a whole number from 1 to 64" in refused.text
    assert qa_app.jobs.list() == []
    started = client.post("/ui/optimizations", data={**fields, "n_trials": "4", "seed": "0", "parallel": "3"})
    assert started.status_code == 303, started.text
    (job,) = qa_app.jobs.list()
    assert (job.payload["parallel"], job.payload["n_trials"]) == (3, 4)
    assert started.headers["location"] == f"/ui/optimizations/{job.payload['optimization_id']}"
