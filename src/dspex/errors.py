"""Errors raised by dspex.

Every error has a stable ``code`` (for logs, APIs and tests) and a message that says what to change.
All of them survive pickling, so they cross process boundaries (worker pools, jobs) intact.

DSPexError
 +-- UserError                 # the caller must change something
 |    +-- SignatureError       # a signature string or spec is invalid (has .spec, .position)
 |    +-- SpecError            # a declarative spec (dict/YAML) is invalid (has .path, .line)
 |    +-- ConfigurationError   # settings, LM configuration, unknown names, bad options
 |    +-- ValidationError      # data does not match a signature's fields (has .issues)
 +-- RunError                  # a run failed; the execution record says why
      +-- DatabaseUnavailable  # the store could not be reached to start the run (has .execution_id)
      +-- ExecutionError       # the program raised (has .execution_id; the cause is chained)
      |    +-- EvaluationAborted   # an evaluation saw more failures than max_errors
      +-- LMError              # the language model failed (has .retryable, .retry_after)
      +-- DeadlineExceeded     # the run's deadline (timeout=) passed (has .waited_s)
      +-- StepError            # a pipeline step gave up (has .step; the cause is chained)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "DSPexError",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "EvaluationAborted",
    "ExecutionError",
    "FieldIssue",
    "LMError",
    "RunError",
    "SignatureError",
    "SpecError",
    "StepError",
    "UserError",
    "ValidationError",
    "WorkerError",
    "did_you_mean",
]


def did_you_mean(name: str, valid: Iterable[str], *, what: str) -> str:
    """An "unknown X" message with a close-match hint and the valid names.

    >>> did_you_mean("chain_of_thougt", ["predict", "chain_of_thought"], what="module")
    "unknown module 'chain_of_thougt'; did you mean 'chain_of_thought'? valid: chain_of_thought, predict"
    """
    names = sorted(valid)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {what} {name!r}{hint} valid: {', '.join(names)}"


class DSPexError(Exception):
    """Base class of every error dspex raises on purpose."""

    code: ClassVar[str] = "dspex_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def _state(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this error; subclasses with fields extend it."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args) by default, which loses keyword-only fields.
        return (_rebuild, (type(self), self.message, self._state()))


def _rebuild(cls: type[DSPexError], message: str, state: dict[str, Any]) -> DSPexError:
    return cls(message, **state)


class UserError(DSPexError):
    """The caller must change something: a spec, a setting, an argument or the input data."""

    code = "user_error"


class SignatureError(UserError):
    """A signature string or definition is invalid.

    ``position`` is the 0-based character offset in ``spec`` where the problem is, when known.
    """

    code = "signature_error"

    def __init__(self, message: str, *, spec: str | None = None, position: int | None = None) -> None:
        super().__init__(message)
        self.spec = spec
        self.position = position

    def _state(self) -> dict[str, Any]:
        return {"spec": self.spec, "position": self.position}


class SpecError(UserError):
    """A declarative spec (a dict, YAML or JSON document) is invalid.

    ``path`` locates the offending value (``"steps[2].module"``); ``line`` is its 1-based line in the
    source document when the spec came from text.
    """

    code = "spec_error"

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{self.message}{where}"

    def _state(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line}


class ConfigurationError(UserError):
    """Settings, LM configuration, an unknown name or a bad option."""

    code = "configuration_error"


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """One field that failed validation: which field, what was expected, what went wrong."""

    field: str
    expected: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (expected {self.expected})"


class ValidationError(UserError):
    """Data does not match a signature's input or output fields; ``issues`` lists every field."""

    code = "validation_error"

    def __init__(self, message: str, *, issues: tuple[FieldIssue, ...] = ()) -> None:
        super().__init__(message)
        self.issues = issues

    def _state(self) -> dict[str, Any]:
        return {"issues": self.issues}


class RunError(DSPexError):
    """A run failed; the execution record says why."""

    code = "run_error"


class ExecutionError(RunError):
    """A program raised while running; ``execution_id`` names its record, the cause is chained."""

    code = "execution_error"

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id

    def _state(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id}


class LMError(RunError):
    """The language model failed. ``retryable`` says whether trying again may succeed."""

    code = "lm_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        execution_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.execution_id = execution_id

    def _state(self) -> dict[str, Any]:
        return {
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "execution_id": self.execution_id,
        }


class DeadlineExceeded(RunError):
    """The run's deadline (``timeout=`` on a run, the API or the CLI) passed before it finished.

    Raised at the next boundary the run reaches after its deadline: an LM call, a retry or limiter wait
    (``waited_s`` says how long that wait lasted), a pipeline step. The run's record is ``failed`` with
    code ``deadline_exceeded``.
    """

    code = "deadline_exceeded"

    def __init__(
        self, message: str, *, waited_s: float | None = None, execution_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.waited_s = waited_s
        self.execution_id = execution_id

    def _state(self) -> dict[str, Any]:
        return {"waited_s": self.waited_s, "execution_id": self.execution_id}


class DatabaseUnavailable(RunError):
    """The database could not be reached when a run needed it before it could start: resolving a
    registered program's version the first time in this process, or after this process changed the
    registry (a version resolved before is served from memory during an outage instead).

    Retrying once the database is back succeeds. ``execution_id`` names the run's ``failed`` record
    (code ``database_unavailable``), written once the database takes writes again; the driver's error is
    chained as the cause.
    """

    code = "database_unavailable"

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id

    @property
    def retryable(self) -> bool:
        """Always True: the database being unreachable says nothing about the run."""
        return True

    def _state(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id}


class WorkerError(ExecutionError):
    """A pool worker could not finish the run: it died (``worker_lost``), went over its memory limit
    (``memory_limit``) or its task timeout (``task_timeout``). The pool replaced the worker."""

    code = "worker_lost"

    def __init__(
        self,
        message: str,
        *,
        code: str = "worker_lost",
        execution_id: str | None = None,
        worker: str | None = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(message, execution_id=execution_id)
        self.code = code  # type: ignore[misc]  # per instance: one class, three causes
        self.worker = worker  # the worker that had the task, when one had it (its placement says so)
        self.pid = pid

    @property
    def retryable(self) -> bool:
        """A lost worker says nothing about the run; a run over its memory or time limit would be again."""
        return self.code == "worker_lost"

    def _state(self) -> dict[str, Any]:
        return {"code": self.code, "execution_id": self.execution_id}


class StepError(RunError):
    """A pipeline step failed after its retries and had no fallback; ``step`` names it."""

    code = "step_error"

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step

    def _state(self) -> dict[str, Any]:
        return {"step": self.step}


class EvaluationAborted(ExecutionError):
    """The program (or a metric) failed on more examples than ``max_errors`` allows.

    ``errors`` is how many failed and ``evaluated`` how many finished before the evaluation stopped;
    the first failure is chained as the cause.
    """

    code = "evaluation_aborted"

    def __init__(
        self, message: str, *, errors: int = 0, evaluated: int = 0, execution_id: str | None = None
    ) -> None:
        super().__init__(message, execution_id=execution_id)
        self.errors = errors
        self.evaluated = evaluated

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "errors": self.errors, "evaluated": self.evaluated}
