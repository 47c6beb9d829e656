"""What a spec may name, decided in one place: :class:`SpecPolicy`.

A spec written by the operator (local Python, the CLI, dspex.toml) is *trusted*: it may name code by
import path (``"my_pkg.tools:lookup"``), choose ``interpreter: local`` and give an LM its own settings.
A spec received over the API is *untrusted*: it is data, so it may only name what the operator
registered on the server, by name:

- tools, reward functions, space constraints and derived values: names in the policy's
  :class:`~dspex.modules.ToolRegistry` (import paths are refused, and nothing is imported);
- interpreters: ``sandbox`` only (``local`` is a plain subprocess with the server's files and keys);
- LMs: ``lm.model`` names a configured model (:class:`~dspex.lm.models.ModelRegistry`), which brings its
  own base URL and key; the spec may add sampling settings only (:data:`~dspex.lm.models.SAMPLING_KEYS`).
  ``api_base``, ``api_key``, ``base_url``, headers and any other LM setting are refused, naming the field.

The checks are static (:meth:`SpecPolicy.check_program_spec`, :meth:`check_space_document`...): they
read the document and the registries and build nothing, so a refused spec imports, runs and sends
nothing. A spec that passes names only registered callables and configured models, so rebuilding it
later (at run time, in a job worker) against the same registries reaches nothing else. ::

    policy = SpecPolicy("untrusted", ToolRegistry([search]), ModelRegistry.from_settings(s))  # app.spec_policy()
    policy.check_module_spec({"module": "react", "signature": "q -> a", "options": {"tools": ["os:system"]}})
    # SpecError: tool 'os:system' is an import path; over the API ... at options.tools[0]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dspex.errors import SpecError
from dspex.lm.models import SAMPLING_KEYS, ModelRegistry
from dspex.modules.catalog import catalog
from dspex.modules.tools import ToolRegistry

__all__ = ["SpecPolicy", "Trust"]

Trust = Literal["trusted", "untrusted"]
"""``trusted``: written by the operator (Python, CLI, files); ``untrusted``: received over the API."""

_LM_SPEC_KEYS = ("model", "fallbacks", *SAMPLING_KEYS)
# Attributes through which a value could redirect an LM (endpoint, key, headers) or reach internals.
_GUARDED_ATTRIBUTES = frozenset({"lm", "lms", "kwargs", "config", "callbacks", "adapter", "engine"})


_BUILTIN_EXCEPTION = re.compile(r"^[A-Z][A-Za-z]*(Error|Exception|Exit|Interrupt)$")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


@dataclass(frozen=True, slots=True)
class SpecPolicy:
    """Where the names in a spec resolve, and whether it may name code or hosts (see the module doc).

    >>> SpecPolicy().trusted, SpecPolicy("untrusted").trusted
    (True, False)
    """

    trust: Trust = "trusted"
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    models: ModelRegistry = field(default_factory=ModelRegistry)

    @property
    def trusted(self) -> bool:
        return self.trust == "trusted"

    # -- static checks (no import, no build) --------------------------------------------------------------
    def check_function_ref(self, ref: Any, path: str, what: str) -> None:
        """An untrusted spec names a registered callable by name; an import path is refused unread."""
        if self.trusted or not isinstance(ref, str):
            return  # a non-string is refused by the option's type check, with the expected type
        if ":" in ref or "." in ref:
            raise SpecError(
                f"{what} {ref!r} is an import path; over the API a spec names only what the operator "
                f"registered on the server: {self._registered()}",
                path=path,
            )
        if ref not in self.tools:
            raise SpecError(
                f"unknown {what} {ref!r}; over the API a spec names only what the operator registered on "
                f"the server: {self._registered()}",
                path=path,
            )

    def _registered(self) -> str:
        names = self.tools.names()
        return ", ".join(names) if names else "nothing is registered ([tools] in dspex.toml)"

    def check_interpreter(self, choice: Any, path: str) -> None:
        if not self.trusted and choice == "local":
            raise SpecError(
                "interpreter 'local' runs generated code as a plain subprocess of the server; it is refused "
                "over the API. Use 'sandbox' (the default)",
                path=path,
            )

    def check_lm_kwargs(self, settings: Any, path: str) -> None:
        """LM keyword arguments (a predictor's ``config``, an ``lm_setting`` binding): sampling only."""
        if self.trusted or not isinstance(settings, Mapping):
            return
        for key in settings:
            self.check_lm_key(str(key), _join(path, str(key)))

    def check_lm_key(self, key: str, path: str) -> None:
        if not self.trusted and key not in SAMPLING_KEYS:
            raise SpecError(
                f"{key!r} is not allowed over the API: the LM's endpoint, key and transport come from the "
                f"server's configured models; a spec may set only {', '.join(SAMPLING_KEYS)}",
                path=path,
            )

    def check_model(self, name: Any, path: str) -> None:
        if self.trusted:
            return
        if not isinstance(name, str) or name not in self.models:
            raise SpecError(self.models.unknown(str(name)), path=path)

    def check_lm(self, lm: Any, path: str = "lm") -> None:
        """A program spec's ``lm``: untrusted, a configured model name and sampling settings only."""
        if self.trusted or not isinstance(lm, Mapping):
            return
        for key in lm:
            if key not in _LM_SPEC_KEYS:
                self.check_lm_key(str(key), _join(path, str(key)))
        self.check_model(lm.get("model"), _join(path, "model"))
        self.check_fallbacks(lm.get("fallbacks"), _join(path, "fallbacks"))

    def check_fallbacks(self, names: Any, path: str) -> None:
        """``lm.fallbacks``: configured model names, at every trust level (a fallback is built from the
        settings, with that model's endpoint and key)."""
        if names is None:
            return
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise SpecError("fallbacks is a list of configured model names", path=path)
        for i, name in enumerate(names):
            if name not in self.models:
                raise SpecError(self.models.unknown(name), path=_join(path, i))

    def check_module_spec(self, data: Any, path: str = "") -> None:
        """Everything in a module spec that names code or a host, checked against the registries.

        Only what this policy forbids is checked here; the shape of the spec (unknown keys, option types)
        is the builder's to report, and the builder runs after this, still under this policy."""
        if self.trusted or not isinstance(data, Mapping):
            return
        entry = catalog().get(data["module"]) if isinstance(data.get("module"), str) else None
        options = data.get("options")
        if entry is None or not isinstance(options, Mapping):
            return
        for option in entry.options:
            if option.name not in options:
                continue
            value = options[option.name]
            where = _join(_join(path, "options"), option.name)
            if option.kind == "tools" and isinstance(value, list | tuple):
                for i, ref in enumerate(value):
                    self.check_function_ref(ref, _join(where, i), "tool")
            elif option.kind == "function":
                self.check_function_ref(value, where, "function")
            elif option.kind == "interpreter":
                self.check_interpreter(value, where)
            elif option.kind == "lm_dict":
                self.check_lm_kwargs(value, where)
            elif option.kind == "module" and isinstance(value, Mapping):
                self.check_module_spec(value, where)
            elif option.kind == "modules" and isinstance(value, list | tuple):
                for i, member in enumerate(value):
                    if isinstance(member, Mapping):
                        self.check_module_spec(member, _join(where, i))
            elif (
                option.kind == "validator"
                and value not in ("critic", "lm")
                and not isinstance(value, Mapping)
            ):
                self.check_function_ref(value, where, "validator")

    def check_pipeline_spec(self, data: Any, path: str = "", *, allow_code: bool = True) -> None:
        """Everything in a pipeline spec that names code: its functions, merge rules and exception
        classes (registered names only when untrusted), and its module steps (:meth:`check_module_spec`).

        ``allow_code=False`` also refuses code-executing catalog modules at any trust level: what an LM
        wrote (``dspex scaffold``) never runs code."""
        if isinstance(data, list):
            for i, item in enumerate(data):
                self.check_pipeline_spec(item, _join(path, i), allow_code=allow_code)
            return
        if not isinstance(data, Mapping):
            return
        name = data.get("module")
        if isinstance(name, str):
            entry = catalog().get(name)
            if entry is not None and entry.executes_code and not allow_code:
                raise SpecError(
                    f"module {name!r} runs generated code, which a generated spec may not use; use a "
                    "module that does not execute code",
                    path=_join(path, "module"),
                )
            self.check_module_spec(data, path)
        for key, value in data.items():
            where = _join(path, str(key))
            if key == "function" and isinstance(value, str):
                self.check_function_ref(value, where, "function")
            elif key == "merge" and isinstance(value, Mapping):
                for field_name, rule in value.items():
                    if isinstance(rule, str) and rule not in ("concat", "first", "last"):
                        self.check_function_ref(rule, _join(where, str(field_name)), "merge rule")
            elif key == "retry_on" and isinstance(value, list):
                for i, ref in enumerate(value):
                    if not (isinstance(ref, str) and _BUILTIN_EXCEPTION.match(ref)):
                        self.check_function_ref(ref, _join(where, i), "exception class")
            elif key == "options" and isinstance(name, str):
                continue  # a module's options: check_module_spec read them
            elif isinstance(value, Mapping | list):
                self.check_pipeline_spec(value, where, allow_code=allow_code)

    # -- building -------------------------------------------------------------------------------------------
    def build_lm(self, lm: Mapping[str, Any], path: str = "lm") -> Any:
        """The LM of a program spec's ``lm``.

        A configured model name is built from the settings (its base URL and key) at any trust level;
        a trusted spec may also give any ``dspy.LM`` settings of its own."""
        self.check_lm(lm, path)
        fallbacks = lm.get("fallbacks")
        self.check_fallbacks(fallbacks, _join(path, "fallbacks"))
        lm = {key: value for key, value in lm.items() if key != "fallbacks"}
        name = lm.get("model")
        if isinstance(name, str) and name in self.models:
            sampling = {key: value for key, value in lm.items() if key != "model"}
            if not self.trusted or all(key in SAMPLING_KEYS for key in sampling):
                return self.models.build(name, fallbacks=fallbacks, **sampling)
        import dspy

        try:
            built = dspy.LM(**lm)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"dspy.LM rejected the lm settings: {exc}", path=path) from exc
        if fallbacks:
            if self.models.wrap is None:
                raise SpecError(
                    "fallbacks need the App's resilience: register the program through an App", path=path
                )
            return self.models.wrap(built, fallbacks=fallbacks)
        return built

    def check_program_spec(self, spec: Any) -> None:
        """A program spec (a module spec plus ``lm``, or ``{pipeline: ...}``), received over the API."""
        if self.trusted or not isinstance(spec, Mapping):
            return
        if "pipeline" in spec:
            self.check_pipeline_spec(spec["pipeline"], "pipeline")
            return
        self.check_module_spec({k: v for k, v in spec.items() if k != "lm"})
        if "lm" in spec:
            self.check_lm(spec["lm"])

    def check_space_document(self, document: Any) -> None:
        """A space document (``{variables, bindings}``) received over the API.

        Constraints and derived values name registered functions, model variables choose among the
        configured models' provider strings, LM-setting bindings set sampling settings only, and
        attribute bindings never reach an LM, its settings or a private attribute."""
        if self.trusted or not isinstance(document, Mapping):
            return
        space = document.get("variables")
        if isinstance(space, Mapping):
            for key, code in (("constraints", "predicate"), ("derived", "fn")):
                entries = space.get(key)
                for i, entry in enumerate(entries if isinstance(entries, list) else ()):
                    if isinstance(entry, Mapping):
                        what = "constraint" if key == "constraints" else "derived value"
                        self.check_function_ref(entry.get(code), f"variables.{key}[{i}].{code}", what)
            variables = space.get("variables")
            for i, variable in enumerate(variables if isinstance(variables, list) else ()):
                self._check_model_variable(variable, f"variables.variables[{i}]")
        bindings = document.get("bindings")
        listed = bindings.get("bindings") if isinstance(bindings, Mapping) else None
        for i, binding in enumerate(listed if isinstance(listed, list) else ()):
            if not isinstance(binding, Mapping):
                continue
            where = f"bindings.bindings[{i}]"
            if binding.get("target") == "lm_setting":
                self.check_lm_key(str(binding.get("setting")), f"{where}.setting")
            elif binding.get("target") == "attribute":
                self._check_attribute_path(binding.get("path"), f"{where}.path")

    def _check_model_variable(self, variable: Any, path: str) -> None:
        if not isinstance(variable, Mapping):
            return
        if variable.get("kind") == "composite":
            members = variable.get("members")
            for i, member in enumerate(members if isinstance(members, list) else ()):
                self._check_model_variable(member, f"{path}.members[{i}]")
            return
        if variable.get("kind") != "model":
            return
        allowed = self.models.provider_models()
        choices = variable.get("choices")
        for i, choice in enumerate(choices if isinstance(choices, list) else ()):
            if choice not in allowed:
                raise SpecError(
                    f"model {choice!r} is not configured on this server; over the API a model variable "
                    f"chooses among the configured models: {', '.join(sorted(allowed)) or 'none'}",
                    path=f"{path}.choices[{i}]",
                )

    def _check_attribute_path(self, attribute: Any, path: str) -> None:
        parts = re.split(r"[.\[\]]+", attribute) if isinstance(attribute, str) else []
        for part in parts:
            if part.startswith("_") or part in _GUARDED_ATTRIBUTES:
                raise SpecError(
                    f"attribute binding {attribute!r} reaches {part!r}; over the API an attribute binding "
                    f"may not set an LM, its settings, callbacks or private attributes "
                    f"({', '.join(sorted(_GUARDED_ATTRIBUTES))})",
                    path=path,
                )
