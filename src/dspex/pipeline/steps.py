"""Steps: the units a pipeline runs, each an ordinary ``dspy.Module``.

A step reads named fields of the pipeline's state and writes named fields back. Its *local* names are
the ones its callable uses (a DSPy module's signature fields, a function's parameters); ``inputs=`` and
``outputs=`` map local names to state fields, so data flows by field name with explicit renames::

    step(dspy.ChainOfThought("query -> answer"), name="draft", inputs={"query": "refined_query"},
         outputs={"answer": "draft", "reasoning": None})       # None drops a field
    step(search_bm25, outputs=["passages"], timeout=2.0, retry=RetryPolicy(attempts=3))

Because steps are DSPy modules, DSPy's callbacks see every step (one span each, named after the step)
and DSPy's optimizers find the predictors inside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import dspy
from dspy.streaming.messages import StatusMessageProvider

from dspex.errors import ConfigurationError, did_you_mean
from dspex.modules._interface import forward_parameters, own_forward
from dspex.modules._introspect import acall_module, single_signature

__all__ = ["FunctionStep", "ModuleStep", "RetryPolicy", "Step", "StepLike", "as_step", "step"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a step is retried: ``attempts`` in all, exponential backoff with jitter, on ``retry_on`` errors.

    The wait before retry *n* (1-based) is ``min(max_backoff, backoff * multiplier ** (n - 1))`` plus up
    to ``jitter`` seconds drawn at random.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 10.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        for name in ("backoff", "max_backoff", "jitter"):
            if getattr(self, name) < 0:
                raise ConfigurationError(
                    f"RetryPolicy.{name} must be >= 0 seconds, got {getattr(self, name)}"
                )
        if self.multiplier < 1:
            raise ConfigurationError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if not self.retry_on or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on
        ):
            raise ConfigurationError("RetryPolicy.retry_on must be a non-empty tuple of exception classes")


def _mapping(
    value: Mapping[str, str | None] | None, local: Sequence[str], what: str, step: str
) -> dict[str, str | None]:
    mapping = dict(value or {})
    for key in mapping:
        if key not in local:
            raise ConfigurationError(
                f"step {step!r}: {what}={{{key!r}: ...}} names no {what[:-1]} of the step; "
                + did_you_mean(key, local, what=f"{what[:-1]} name")
            )
    return mapping


class Step(dspy.Module):  # type: ignore[misc]  # dspy.Module is untyped
    """Base of every step: names, field mapping and run options. Subclasses implement ``arun_local``."""

    def __init__(
        self,
        name: str,
        local_inputs: Sequence[str],
        local_outputs: Sequence[str],
        *,
        optional_inputs: Sequence[str] = (),
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str | None] | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        fallback: StepLike | None = None,
        continue_on_error: bool = False,
    ) -> None:
        super().__init__()
        if not name or not isinstance(name, str):
            raise ConfigurationError(f"a step needs a non-empty name, got {name!r}")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"step {name!r}: timeout must be > 0 seconds, got {timeout}")
        self.name = name
        self.local_inputs = tuple(local_inputs)
        self.local_outputs = tuple(local_outputs)
        self.optional_inputs = frozenset(optional_inputs)
        self.input_map = _mapping(inputs, self.local_inputs, "inputs", name)
        self.output_map = _mapping(outputs, self.local_outputs, "outputs", name)
        self.timeout = timeout
        self.retry = retry
        self.fallback = as_step(fallback) if fallback is not None else None
        self.continue_on_error = continue_on_error
        if self.fallback is not None and set(self.fallback.writes) - set(self.writes):
            extra = sorted(set(self.fallback.writes) - set(self.writes))
            raise ConfigurationError(
                f"step {name!r}: its fallback {self.fallback.name!r} writes {extra}, which the step does not; "
                "a fallback must produce the same fields (rename with outputs={...})"
            )

    # -- the data contract ---------------------------------------------------------------------------
    def state_field(self, local: str) -> str:
        """The state field a local input reads."""
        return self.input_map.get(local) or local

    @property
    def reads(self) -> tuple[str, ...]:
        """State fields this step may read: its own (optional ones included), then its fallback's.

        The fallback's fields count so that the pipeline orders the step after whatever writes them and
        passes them down (through ``parallel``, ``map``...); they are optional, needed only on failure.
        """
        own = [self.state_field(name) for name in self.local_inputs]
        if self.fallback is not None:
            own.extend(f for f in self.fallback.reads if f not in own)
        return tuple(own)

    @property
    def required_reads(self) -> tuple[str, ...]:
        return tuple(self.state_field(n) for n in self.local_inputs if n not in self.optional_inputs)

    @property
    def writes(self) -> tuple[str, ...]:
        """State fields this step writes (dropped outputs excluded)."""
        out = []
        for name in self.local_outputs:
            target = self.output_map.get(name, name)
            if target is not None:
                out.append(target)
        return tuple(out)

    def local_kwargs(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The step's keyword arguments from ``state``; a missing required field is a ConfigurationError."""
        kwargs: dict[str, Any] = {}
        for local in self.local_inputs:
            field = self.state_field(local)
            if field in state:
                kwargs[local] = state[field]
            elif local not in self.optional_inputs:
                raise ConfigurationError(
                    f"step {self.name!r} needs field {field!r}, which is not in the pipeline state "
                    f"(present: {', '.join(sorted(state)) or 'nothing'})"
                )
        return kwargs

    def state_updates(self, local_outputs: Mapping[str, Any]) -> dict[str, Any]:
        """Map a step's local outputs to state fields, dropping the ones mapped to None."""
        updates: dict[str, Any] = {}
        for local in self.local_outputs:
            if local not in local_outputs:
                continue
            target = self.output_map.get(local, local)
            if target is not None:
                updates[target] = local_outputs[local]
        return updates

    # -- running -------------------------------------------------------------------------------------
    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        """Run the step on local inputs, returning local outputs."""
        raise NotImplementedError  # abstract: every concrete step overrides it

    async def aforward(self, **kwargs: Any) -> dspy.Prediction:
        return dspy.Prediction(**await self.arun_local(**kwargs))

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        from dspex.pipeline._sync import run_coroutine

        return run_coroutine(self.aforward(**kwargs))

    def describe(self) -> dict[str, Any]:
        """What the step is, for specs and events."""
        return {"name": self.name, "kind": type(self).__name__, "reads": self.reads, "writes": self.writes}


def _module_fields(module: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None:
    """``(inputs, optional inputs, outputs)`` of a module, or None when they cannot be told.

    A user's module with its own ``forward`` reads that forward's parameters (as :meth:`App.run` checks
    them) and writes its only predictor's outputs; DSPy's modules read and write their signature's fields.
    """
    signature = single_signature(module)
    forward = own_forward(type(module))
    if forward is None:
        if signature is None:
            return None
        return tuple(signature.input_fields), (), tuple(signature.output_fields)
    parameters = forward_parameters(module, forward)
    declared: Any = getattr(module, "signature", None)
    if (
        parameters is not None
        and parameters.any_keyword
        and declared is not None
        and hasattr(declared, "input_fields")
    ):
        # A module declaring its signature (DSPex's patterns: forward(**inputs)) reads that signature's inputs.
        return tuple(declared.input_fields), (), tuple(declared.output_fields)
    if parameters is None or parameters.any_keyword or signature is None:
        return None
    names = tuple(p.name for p in parameters.parameters)
    return names, parameters.optional, tuple(signature.output_fields)


def _token_emitter() -> Callable[[Any], None] | None:
    """The current run's event sink when someone is listening (``Pipeline.stream``), else None."""
    # Imported here: flow imports this module, so a module-level import would be circular.
    from dspex.pipeline.flow import _current

    run = _current.get()
    return run.emit if run is not None else None


@dataclass(frozen=True, slots=True)
class _StreamTarget:
    """An output field to stream: the predictor producing it and the state field its tokens are named by."""

    local: str
    field: str
    predictor_name: str
    predictor: Any


def _stream_targets(
    module: Any, local_outputs: Sequence[str], output_map: Mapping[str, str | None]
) -> list[_StreamTarget]:
    """The step's string outputs that a predictor inside ``module`` writes, each with that predictor.

    DSPy's ``StreamListener`` only parses ``str`` fields, so typed ones (lists, numbers...) are left out,
    and so are outputs the step drops (mapped to None). When several predictors write a field (a draft
    and a revision, ReAct's loop and its extraction), the last one is taken: in DSPy's composite
    modules the last predictor to write a field is the one whose value the module returns.
    """
    predictors = module.named_predictors()
    targets = []
    for local in local_outputs:
        target = output_map.get(local, local)
        if target is None:
            continue
        owners = [(name, p) for name, p in predictors if local in p.signature.output_fields]
        if not owners:
            continue
        name, predictor = owners[-1]
        if predictor.signature.output_fields[local].annotation is str:
            targets.append(_StreamTarget(local, target, name, predictor))
    return targets


class _Streamable:
    """What a streamed step hands to ``dspy.streamify``: its module, called as the plain path calls it.

    streamify ends its stream when the program returns a ``dspy.Prediction`` and waits forever otherwise,
    so the module's outputs are always returned as one. This is not a ``dspy.Module`` on purpose:
    streamify calls ``acall``, and a module here would show up as an extra span in DSPy's callbacks.
    """

    def __init__(self, owner: ModuleStep) -> None:
        self.owner = owner

    def named_predictors(self) -> list[tuple[str, Any]]:
        return list(self.owner.module.named_predictors())

    async def acall(self, **kwargs: Any) -> dspy.Prediction:
        return dspy.Prediction(**self.owner._outputs(await acall_module(self.owner.module, **kwargs)))


class _NoStatus(StatusMessageProvider):  # type: ignore[misc]  # dspy is untyped
    """No status messages: the pipeline's own events say what runs, and DSPy sends tool messages from
    inside the event loop through a helper thread, which a pipeline has no use for."""

    def tool_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> None:
        return None

    def tool_end_status_message(self, outputs: Any) -> None:
        return None


class ModuleStep(Step):
    """A DSPy module as a step: reads its signature's inputs, writes its outputs.

    A user's module with its own ``forward`` reads that forward's parameters (optional ones when the state
    has them) and writes its only predictor's outputs. ``input_fields=`` / ``output_fields=`` say
    otherwise; a module with several predictors (or a ``**kwargs`` forward) needs both. Modules with a native ``aforward`` run on the event loop; others run in a worker
    thread through ``dspy.asyncify``, so parallel branches overlap either way.

    Under ``Pipeline.stream()`` the module runs through ``dspy.streamify`` with a listener on each of its
    string output fields, and every chunk becomes a ``Token(step, field, chunk)`` event (``field`` is the
    state field, after renames) between the step's ``StepStarted`` and ``StepFinished``. For a predictor
    called once, a field's chunks join up to its final value; a field that did not stream (a cache hit)
    arrives as one token. Without a listener nothing of this runs.
    """

    def __init__(
        self,
        module: Any,
        name: str | None = None,
        *,
        input_fields: Sequence[str] | None = None,
        output_fields: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(module, dspy.Module):
            raise ConfigurationError(f"ModuleStep takes a dspy.Module, got {type(module).__name__}")
        found = _module_fields(module)
        if found is None and (input_fields is None or output_fields is None):
            raise ConfigurationError(
                f"{type(module).__name__} has no single signature (or its forward takes **kwargs); give "
                "input_fields=[...] and output_fields=[...] for its step"
            )
        inputs, optional, outputs = found or ((), (), ())
        if input_fields is not None:
            inputs, optional = tuple(input_fields), ()
        if output_fields is not None:
            outputs = tuple(output_fields)
        name = name or _default_name(module)
        options.setdefault("optional_inputs", optional)
        super().__init__(name, inputs, outputs, **options)
        self.module = module

    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        emit = _token_emitter()
        if emit is not None:
            targets = _stream_targets(self.module, self.local_outputs, self.output_map)
            if targets:
                return await self._arun_streaming(kwargs, targets, emit)
        return self._outputs(await acall_module(self.module, **kwargs))

    def _outputs(self, prediction: Any) -> dict[str, Any]:
        return {name: prediction[name] for name in self.local_outputs if name in prediction}

    async def _arun_streaming(
        self, kwargs: dict[str, Any], targets: Sequence[_StreamTarget], emit: Callable[[Any], None]
    ) -> dict[str, Any]:
        """Run the module through ``dspy.streamify``, emitting a ``Token`` per chunk of a listened field."""
        from dspy.streaming import StreamListener, StreamResponse

        from dspex.pipeline.events import Token

        # Listeners keep per-stream state, so every run gets its own.
        listeners = [
            StreamListener(t.local, predict=t.predictor, predict_name=t.predictor_name) for t in targets
        ]
        state_field = {t.local: t.field for t in targets}
        streamed: set[str] = set()
        program = dspy.streamify(
            _Streamable(self),
            status_message_provider=_NoStatus(),
            stream_listeners=listeners,
            is_async_program=True,
        )
        outputs: dict[str, Any] | None = None
        async with contextlib.aclosing(program(**kwargs)) as stream:
            async for value in stream:
                if isinstance(value, StreamResponse):
                    if value.chunk:
                        streamed.add(value.signature_field_name)
                        emit(Token(self.name, state_field[value.signature_field_name], value.chunk))
                elif isinstance(value, dspy.Prediction):
                    outputs = dict(value.items())
        if outputs is None:  # streamify ends its stream with the prediction; anything else is a DSPy change
            raise RuntimeError(f"step {self.name!r}: dspy.streamify ended without a prediction")
        for t in targets:
            # An LM call answered from the cache (or in one chunk) streams nothing; the field's value then
            # arrives as one token, so a consumer that renders tokens still sees every listened field.
            value = outputs.get(t.local)
            if t.local not in streamed and isinstance(value, str) and value:
                emit(Token(self.name, t.field, value))
        return outputs


class FunctionStep(Step):
    """A plain Python function (sync or async) as a step.

    Its parameters are its inputs (those with defaults are optional); ``outputs`` names what it returns:
    a list of names for a function returning a mapping (or ``dspy.Prediction``) with those keys, or one
    name for a function whose return value is that single field. Sync functions run in a worker thread.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        *,
        outputs: Sequence[str] | str,
        **options: Any,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"FunctionStep takes a callable, got {type(fn).__name__}")
        parameters = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        self.single = isinstance(outputs, str)
        local_outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        if not local_outputs:
            raise ConfigurationError(f"function step {name or fn.__name__!r} must name at least one output")
        super().__init__(
            str(name or getattr(fn, "__name__", "function")),
            [p.name for p in parameters],
            local_outputs,
            optional_inputs=[p.name for p in parameters if p.default is not p.empty],
            **options,
        )
        self.fn = fn
        # A callable object with `async def __call__` is a coroutine function too, though inspect says no.
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    async def arun_local(self, **kwargs: Any) -> dict[str, Any]:
        result = await self.fn(**kwargs) if self.is_async else await asyncio.to_thread(self.fn, **kwargs)
        if self.single:
            return {self.local_outputs[0]: result}
        if isinstance(result, dspy.Prediction):
            result = result.toDict()
        if not isinstance(result, Mapping):
            raise TypeError(
                f"function step {self.name!r} declares outputs {list(self.local_outputs)} and so must return a "
                f"mapping with those keys, got {type(result).__name__}; or declare outputs='name' for one value"
            )
        missing = [n for n in self.local_outputs if n not in result]
        if missing:
            raise TypeError(
                f"function step {self.name!r} returned no {missing} (it returned {sorted(result)})"
            )
        return {n: result[n] for n in self.local_outputs}


def _default_name(thing: Any) -> str:
    name = getattr(thing, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(thing, "__name__", None) or type(thing).__name__).lower()


# A Step, or a dspy.Module to wrap as one (DSPy is untyped, so this cannot be narrower than Any).
StepLike: TypeAlias = Any


def as_step(thing: Any) -> Step:
    """A step from a step or a DSPy module; functions need :func:`step` to declare their outputs."""
    if isinstance(thing, Step):
        return thing
    if isinstance(thing, dspy.Module):
        return ModuleStep(thing)
    if callable(thing):
        raise ConfigurationError(
            f"function {getattr(thing, '__name__', thing)!r} needs its outputs declared: "
            f"step({getattr(thing, '__name__', 'fn')}, outputs=['field', ...])"
        )
    raise ConfigurationError(
        f"a pipeline step is a dspy.Module, a step(...) or a pipeline, got {type(thing).__name__}"
    )


def step(
    target: Any,
    name: str | None = None,
    *,
    inputs: Mapping[str, str] | None = None,
    outputs: Sequence[str] | str | Mapping[str, str | None] | None = None,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
    fallback: StepLike | None = None,
    continue_on_error: bool = False,
    input_fields: Sequence[str] | None = None,
    output_fields: Sequence[str] | None = None,
) -> Step:
    """A step from a DSPy module or a function, with its field mapping and run options.

    For a module, ``outputs`` is a rename mapping (``{"answer": "draft", "reasoning": None}``). For a
    function it declares what the function returns (``["a", "b"]`` or ``"a"``). ::

        step(dspy.Predict("question -> answer"), timeout=5, retry=RetryPolicy(attempts=2))
        step(fetch, outputs=["passages"], continue_on_error=True)
    """
    options: dict[str, Any] = {
        "inputs": inputs,
        "timeout": timeout,
        "retry": retry,
        "fallback": fallback,
        "continue_on_error": continue_on_error,
    }
    if isinstance(target, Step):
        raise ConfigurationError(f"{target.name!r} is already a step; pass it to the pipeline directly")
    if isinstance(target, dspy.Module):
        if outputs is not None and not isinstance(outputs, Mapping):
            raise ConfigurationError(
                f"for a module step, outputs= renames fields ({{'answer': 'draft'}}); the module's signature "
                f"already says what it writes, got {outputs!r}"
            )
        return ModuleStep(
            target, name, input_fields=input_fields, output_fields=output_fields, outputs=outputs, **options
        )
    if callable(target):
        if outputs is None or isinstance(outputs, Mapping):
            raise ConfigurationError(
                f"function step {name or getattr(target, '__name__', '?')!r} must declare what it returns: "
                "outputs=['field', ...] (it returns a mapping) or outputs='field' (one value)"
            )
        return FunctionStep(target, name, outputs=outputs, **options)
    raise ConfigurationError(f"step() takes a dspy.Module or a function, got {type(target).__name__}")
