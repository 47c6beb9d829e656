"""``dspex lms``: the configured models and their resilience: limits, fallbacks, breaker states.

    dspex lms status                                  # from dspex.toml; live states when Redis is shared
    dspex lms status --url http://127.0.0.1:8000      # a running server's view (GET /health)
    dspex lms status --json

Breaker states and limiter counts live in Redis when ``DSPEX_REDIS_URL`` is set (every process sees the
same), else in each process: then only a server (``--url``) can say what its breakers are doing.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from dspex.cli._render import console, emit_json, errors, open_app, text
from dspex.errors import ConfigurationError

app = typer.Typer(help="Configured models: limits, fallbacks and circuit breakers.", no_args_is_help=True)


def _models(dspex_app: Any) -> list[dict[str, Any]]:
    """Each configured model with the resilience the settings give it."""
    resilience = dspex_app.resilience
    rows = []
    for name in dspex_app.models.names():
        lm = dspex_app.models.build(name, wrap=False)
        policy = resilience.policy(lm)
        spec = policy.limits
        rows.append(
            {
                "name": name,
                "model": lm.model,
                "endpoint": policy.endpoint,
                "rpm": spec.rpm if spec else None,
                "tpm": spec.tpm if spec else None,
                "max_concurrent": spec.max_concurrent if spec else None,
                "retries": resilience.retries(policy, lm),
                "fallbacks": list(policy.fallbacks),
            }
        )
    return rows


def _fetch_health(url: str) -> dict[str, Any]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10.0) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 503:  # 503: the database is down, the body still holds the LM states
            raise ConfigurationError(
                f"{url} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}"
            ) from None
        body = json.loads(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigurationError(f"cannot reach {url}: {exc}") from None
    lms = body.get("lms")
    if not isinstance(lms, dict):
        raise ConfigurationError(f"{url}/health has no 'lms' section; is it a dspex server of this version?")
    return lms


def _render(models: list[dict[str, Any]] | None, lms: dict[str, Any], source: str) -> None:
    out = console()
    if models is not None:
        table = Table(title="configured models")
        for column in ("name", "model", "rpm", "tpm", "concurrent", "retries", "fallbacks"):
            table.add_column(column)
        for m in models:
            table.add_row(
                text(m["name"]),
                text(m["model"]),
                *("-" if m[k] is None else str(m[k]) for k in ("rpm", "tpm", "max_concurrent")),
                str(m["retries"]),
                text(" -> ".join(m["fallbacks"]) or "-"),
            )
        out.print(table)
    breakers = Table(title=f"circuit breakers ({source})")
    for column in ("endpoint", "state", "calls", "failures", "failure rate", "opens", "retry after s"):
        breakers.add_column(column)
    for b in lms.get("breakers", []):
        breakers.add_row(
            text(b["endpoint"]),
            text(b["state"]),
            str(b.get("calls", 0)),
            str(b.get("failures", 0)),
            "-" if b.get("failure_rate") is None else f"{b['failure_rate']:.0%}",
            str(b.get("opens", 0)),
            "-" if b.get("retry_after") is None else f"{b['retry_after']:.1f}",
        )
    out.print(breakers)
    if not lms.get("breakers"):
        out.print("no breaker has seen a call yet" if lms.get("shared") or source != "this process" else
                  "no breaker in this process; breaker states live in each process unless DSPEX_REDIS_URL is "
                  "set: ask a server with --url")  # fmt: skip
    if lms.get("limits"):
        limits = Table(title="rate limits")
        for column in (
            "model",
            "rpm",
            "tpm",
            "concurrent",
            "requests last min",
            "tokens last min",
            "in flight",
        ):
            limits.add_column(column)
        for lim in lms["limits"]:
            limits.add_row(
                text(lim["key"]),
                *(
                    "-" if lim.get(k) is None else str(lim[k])
                    for k in (
                        "rpm",
                        "tpm",
                        "max_concurrent",
                        "requests_last_min",
                        "tokens_last_min",
                        "in_flight",
                    )
                ),
            )
        out.print(limits)


@app.command("status")
def status(
    url: str | None = typer.Option(None, "--url", help="Ask this server instead (GET /health, no key)."),
    as_json: bool = typer.Option(False, "--json", help="Print models and states as JSON."),
) -> None:
    """Show the configured models (limits, retries, fallbacks) and the circuit breakers' states.

    Exit codes: 0 shown, 2 bad settings or the server cannot be reached.
    """
    if url is not None:
        with errors():
            lms = _fetch_health(url)
        if as_json:
            emit_json({"source": url, **lms})
        else:
            _render(None, lms, url)
        return
    with open_app() as dspex_app:
        models = _models(dspex_app)
        lms = dspex_app.resilience.status()
        if lms["shared"]:
            # Shared through Redis: every breaker any process created, not only this one's.
            lms["breakers"] = dspex_app.resilience.breakers.status()
            lms["limits"] = dspex_app.resilience.limits.status()
    source = "shared through Redis" if lms["shared"] else "this process"
    if as_json:
        emit_json({"source": source, "models": models, **lms})
    else:
        _render(models, lms, source)
