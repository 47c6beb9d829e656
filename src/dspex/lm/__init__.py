"""From settings to a ``dspy.LM``, and the scoped way to run with it.

Runs never call ``dspy.configure`` (DSPy allows it only in the thread that first called it); they use
``dspy.context(lm=...)``, which :func:`using` wraps::

    lm = build_lm(Settings.load(lm="openai/gpt-4o-mini"))
    with using(lm):
        dspy.Predict("question -> answer")(question="...")

Provider keys: ``DSPEX_API_KEY`` (or ``api_key=``) when given, else DSPy reads the provider's own
variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``...) and says which one is missing at the first call.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from dspex.errors import ConfigurationError
from dspex.settings import Settings

__all__ = ["build_lm", "using"]

_MODEL = re.compile(r"^[A-Za-z0-9_.-]+/\S+$")


def build_lm(settings: Settings | None = None, /, *, engine: Any = None, **kwargs: Any) -> Any:
    """A ``dspy.LM`` for ``settings.lm`` (or ``model=``), with the configured endpoint and defaults.

    ``engine=`` injects a DSPy 3.4 engine object (for example ``dspex.testing.ScriptedEngine``);
    other keyword arguments go to ``dspy.LM`` and win over settings.
    """
    settings = settings or Settings.load()
    model = kwargs.pop("model", None) or settings.lm
    if not model:
        raise ConfigurationError(
            "no language model configured: set DSPEX_LM (for example DSPEX_LM=openai/gpt-4o-mini), "
            "`lm = ...` in dspex.toml, or pass model=...; for offline runs use dspex.testing"
        )
    if not _MODEL.match(model):
        raise ConfigurationError(
            f"model {model!r} needs a provider prefix, like 'openai/{model}' or 'anthropic/{model}'"
        )
    options: dict[str, Any] = {"cache": settings.lm_cache, "num_retries": settings.num_retries}
    if settings.temperature is not None:
        options["temperature"] = settings.temperature
    if settings.max_tokens is not None:
        options["max_tokens"] = settings.max_tokens
    if engine is None:
        # A custom engine owns its connection; DSPy refuses client settings next to one.
        if settings.api_base:
            options["api_base"] = settings.api_base
        if settings.api_key is not None:
            options["api_key"] = settings.api_key.get_secret_value()
        if settings.timeout is not None:
            options["timeout"] = settings.timeout
    else:
        options["engine"] = engine
        aio = getattr(engine, "aio", None)
        if callable(aio):
            options["async_engine"] = aio()
    options.update(kwargs)
    import dspy

    try:
        return dspy.LM(model, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot build LM {model!r}: {exc}") from exc


@contextlib.contextmanager
def using(lm: Any, **settings: Any) -> Iterator[None]:
    """Run the block with ``lm`` (and other DSPy settings such as ``adapter=``) in a scoped context."""
    import dspy

    with dspy.context(lm=lm, **settings):
        yield
