"""Named Python callables that specs refer to: agent tools and reward functions.

A :class:`ToolRegistry` is an explicit object you create and pass to ``build_module`` /
``module_from_spec``; there is no global registry. A spec names a callable either by its registered name
(``"search"``) or by an import path (``"package.module:function"``), which is imported with importlib.
A service that loads specs from untrusted users can turn import paths off with
``ToolRegistry(allow_import_paths=False)``, so a spec can only reach what was registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, overload

import dspy

from dspex.errors import ConfigurationError, did_you_mean

__all__ = ["ToolRegistry"]

F = TypeVar("F", bound=Callable[..., Any])
G = TypeVar("G", bound=Callable[..., Any])


class ToolRegistry:
    """Maps names to Python callables (tools and reward functions).

    >>> registry = ToolRegistry()
    >>> @registry.register
    ... def search(query: str) -> str:
    ...     "Search the web."
    ...     return "..."
    >>> registry.add(len, name="count")
    <built-in function len>
    >>> registry.names()
    ('count', 'search')
    >>> registry.resolve("os.path:join").__name__
    'join'
    """

    def __init__(
        self,
        functions: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]] = (),
        *,
        allow_import_paths: bool = True,
    ) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self.allow_import_paths = allow_import_paths
        if isinstance(functions, Mapping):
            for name, fn in functions.items():
                self.add(fn, name=name)
        else:
            for fn in functions:
                self.add(fn)

    def add(self, fn: F, name: str | None = None) -> F:
        """Register ``fn`` under ``name`` (default: its ``__name__``) and return it unchanged."""
        if not callable(fn):
            raise ConfigurationError(f"a tool must be callable, got {fn!r} ({type(fn).__name__})")
        name = name if name is not None else getattr(fn, "__name__", None)
        # Tool names end up as identifiers in prompts and in generated code.
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(f"tool name must be a Python identifier, got {name!r}; pass name=...")
        if name in self._functions and self._functions[name] is not fn:
            raise ConfigurationError(f"tool name {name!r} is already registered to another function")
        self._functions[name] = fn
        return fn

    @overload
    def register(self, fn: F, /) -> F: ...

    @overload
    def register(self, fn: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def register(
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None
    ) -> Callable[..., Any]:
        """Decorator form of :meth:`add`: ``@registry.register`` or ``@registry.register(name="x")``."""
        if fn is not None:
            return self.add(fn)

        def decorate(f: G) -> G:
            return self.add(f, name=name)

        return decorate

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._functions))

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._functions)

    def __repr__(self) -> str:
        return f"ToolRegistry({', '.join(self.names())})"

    def resolve(self, ref: str, *, what: str = "tool") -> Callable[..., Any]:
        """The callable a spec means by ``ref``: a registered name, or an import path with a colon.

        >>> ToolRegistry().resolve("serch")
        Traceback (most recent call last):
        dspex.errors.ConfigurationError: unknown tool 'serch'; no tools or functions are registered ...
        """
        if ":" in ref:
            return self._import(ref, what)
        fn = self._functions.get(ref)
        if fn is None:
            if self._functions:
                message = did_you_mean(ref, self._functions, what=what)
            else:
                message = f"unknown {what} {ref!r}; no tools or functions are registered"
            if self.allow_import_paths:
                message += " (or an import path 'package.module:function')"
            raise ConfigurationError(message)
        return fn

    def _import(self, ref: str, what: str) -> Callable[..., Any]:
        if not self.allow_import_paths:
            raise ConfigurationError(
                f"{what} {ref!r} is an import path, but this registry does not allow import paths; "
                f"register it and use its name (registered: {', '.join(self.names()) or 'none'})"
            )
        module_name, _, attr_path = ref.partition(":")
        if not module_name or not attr_path:
            raise ConfigurationError(f"{what} import path {ref!r} must look like 'package.module:function'")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigurationError(f"{what} {ref!r}: cannot import module {module_name!r}: {e}") from e
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ConfigurationError(
                    f"{what} {ref!r}: {module_name!r} has no attribute {attr_path!r}"
                ) from None
        if not callable(obj):
            raise ConfigurationError(f"{what} {ref!r} is not callable: {type(obj).__name__}")
        return obj  # type: ignore[no-any-return]  # checked callable above; getattr chain is untyped

    def tool(self, ref: str | Callable[..., Any]) -> Any:
        """A ``dspy.Tool`` for ``ref`` (a name, an import path, a callable or a ``dspy.Tool``).

        A registered function keeps its registered name as the tool name.
        """
        if isinstance(ref, dspy.Tool):
            return ref
        if isinstance(ref, str):
            fn = self.resolve(ref)
            name = ref if ref in self._functions else getattr(fn, "__name__", None)
            return dspy.Tool(fn, name=name)
        if callable(ref):
            return dspy.Tool(ref)
        raise ConfigurationError(f"a tool is a name, an import path or a callable, got {ref!r}")
