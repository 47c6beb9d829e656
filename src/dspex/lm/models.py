"""Configured models: the allow-list of LMs a spec received over the API may name.

The operator configures models in the settings; a spec names one by its name and gets an LM built with
that model's base URL and key, never with transport settings of its own::

    # dspex.toml
    lm = "openai/gpt-4o-mini"            # the default model: configured under the name "openai/gpt-4o-mini"
    [models.fast]
    model = "openai/gpt-4o-mini"
    api_base = "http://vllm.internal:8000/v1"
    api_key_env = "VLLM_KEY"             # the key by environment variable name (or api_key = "...")

    registry = ModelRegistry.from_settings(settings)
    lm = registry.build("fast", temperature=0.2)      # dspy.LM("openai/gpt-4o-mini", api_base=..., api_key=...)

A spec may add only sampling settings (:data:`SAMPLING_KEYS`); anything else (``api_base``, ``api_key``,
``base_url``, headers...) is refused by :class:`dspex.modules.SpecPolicy` with the field's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from pydantic import SecretStr

    from dspex.settings import Settings

__all__ = ["SAMPLING_KEYS", "ConfiguredModel", "ModelRegistry"]

SAMPLING_KEYS = (
    "temperature",
    "max_tokens",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "rollout_id",
)
"""LM keyword arguments a spec from the API may set: how to sample, never where or as whom to connect."""


@dataclass(frozen=True, slots=True)
class ConfiguredModel:
    """One model the operator configured: the name specs use, the provider model, endpoint and key.

    ``api_key`` is the key itself (from the settings); ``api_key_env`` names an environment variable read
    when an LM is built. With neither, DSPy reads the provider's own variable (``OPENAI_API_KEY``...).
    """

    name: str
    model: str
    api_base: str | None = None
    api_key: SecretStr | None = field(default=None, repr=False)
    api_key_env: str | None = None

    def key(self) -> str | None:
        """The key to send, or None (DSPy then uses the provider's own variable)."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is not None:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigurationError(
                    f"model {self.name!r} takes its key from ${self.api_key_env}, which is not set; "
                    "set it where the server and workers run"
                )
            return value
        return None


class ModelRegistry:
    """The configured models by name, and the defaults every LM built from them gets.

    >>> registry = ModelRegistry([ConfiguredModel("fast", "openai/gpt-4o-mini")])
    >>> registry.names()
    ('fast',)
    >>> registry.get("fsat")
    Traceback (most recent call last):
    dspex.errors.ConfigurationError: unknown model 'fsat'; did you mean 'fast'? ...
    """

    def __init__(
        self, models: Iterable[ConfiguredModel] = (), *, defaults: Mapping[str, Any] | None = None
    ) -> None:
        self._models: dict[str, ConfiguredModel] = {}
        for entry in models:
            if entry.name in self._models:
                raise ConfigurationError(f"model {entry.name!r} is configured twice; keep one")
            self._models[entry.name] = entry
        self.defaults = dict(defaults or {})
        # What every LM built here goes through (the App sets it to its resilience's wrap); None: bare.
        self.wrap: Callable[..., Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The default model (``lm``, ``api_base``, ``api_key``), named by its model string, and every
        ``[models.NAME]`` entry."""
        from dspex.lm import _MODEL

        entries: list[ConfiguredModel] = []
        if settings.lm:
            entries.append(ConfiguredModel(settings.lm, settings.lm, settings.api_base, settings.api_key))
        for name, entry in settings.models.items():
            if settings.lm and name == settings.lm:
                raise ConfigurationError(
                    f"[models.{name}] has the name of the default model (lm = {settings.lm!r}); rename it"
                )
            if not _MODEL.match(entry.model):
                raise ConfigurationError(
                    f"[models.{name}] model {entry.model!r} needs a provider prefix, like 'openai/{entry.model}'"
                )
            entries.append(
                ConfiguredModel(name, entry.model, entry.api_base, entry.api_key, entry.api_key_env)
            )
        defaults: dict[str, Any] = {"cache": settings.lm_cache, "num_retries": settings.num_retries}
        if settings.temperature is not None:
            defaults["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            defaults["max_tokens"] = settings.max_tokens
        if settings.timeout is not None:
            defaults["timeout"] = settings.timeout
        return cls(entries, defaults=defaults)

    def names(self) -> tuple[str, ...]:
        """Configured model names, sorted."""
        return tuple(sorted(self._models))

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    def __repr__(self) -> str:
        return f"ModelRegistry({', '.join(self.names())})"

    def unknown(self, name: str) -> str:
        """The message for a name that is not configured."""
        if not self._models:
            return (
                f"model {name!r} is not configured, and no model is: the operator configures them "
                "(`lm = ...` or [models.NAME] in dspex.toml)"
            )
        return did_you_mean(name, self._models, what="model") + " (configured models only)"

    def get(self, name: str) -> ConfiguredModel:
        """The model configured as ``name``; ConfigurationError naming the configured ones."""
        entry = self._models.get(name)
        if entry is None:
            raise ConfigurationError(self.unknown(name))
        return entry

    def provider_models(self) -> frozenset[str]:
        """The provider model strings of the configured models (what a model variable may choose)."""
        return frozenset(entry.model for entry in self._models.values())

    def by_provider_model(self, model: str) -> ConfiguredModel | None:
        """The first configured model (by name) whose provider model is ``model``."""
        return next((self._models[n] for n in self.names() if self._models[n].model == model), None)

    def build(
        self, name: str, /, *, wrap: bool = True, fallbacks: Sequence[str] | None = None, **sampling: Any
    ) -> Any:
        """A ``dspy.LM`` for the configured model ``name`` with its base URL and key, the settings'
        defaults and ``sampling`` (keys from :data:`SAMPLING_KEYS` only), through :attr:`wrap` (the App's
        resilience, with ``fallbacks``: configured model names) unless ``wrap=False``."""
        entry = self.get(name)
        for setting in sampling:
            if setting not in SAMPLING_KEYS:
                raise ConfigurationError(
                    f"{setting!r} is not a sampling setting; an LM from a configured model takes only "
                    f"{', '.join(SAMPLING_KEYS)}"
                )
        options: dict[str, Any] = {**self.defaults, **{k: v for k, v in sampling.items() if v is not None}}
        if entry.api_base:
            options["api_base"] = entry.api_base
        key = entry.key()
        if key is not None:
            options["api_key"] = key
        import dspy

        try:
            lm = dspy.LM(entry.model, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"cannot build LM for configured model {name!r}: {exc}") from exc
        if not wrap or self.wrap is None:
            return lm
        return self.wrap(lm, fallbacks=fallbacks) if fallbacks else self.wrap(lm)
