from __future__ import annotations

import pickle

import pytest

from dspex import errors
from dspex.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    DSPexError,
    EvaluationAborted,
    ExecutionError,
    FieldIssue,
    LMError,
    RunError,
    SignatureError,
    SpecError,
    UserError,
    ValidationError,
    did_you_mean,
)

ALL_ERRORS = [
    DSPexError("base"),
    UserError("user"),
    SignatureError("bad arrow at column 3", spec="a -> -> b", position=3),
    SpecError("unknown module 'x'", path="steps[2].module", line=7),
    ConfigurationError("no LM"),
    ValidationError("inputs do not match", issues=(FieldIssue("k", "int", "got 'abc'"),)),
    RunError("failed"),
    ExecutionError("program raised ValueError: boom", execution_id="e1"),
    EvaluationAborted("4 examples failed", errors=4, evaluated=10),
    LMError("rate limited", retryable=True, retry_after=1.5),
    DatabaseUnavailable("cannot run 'qa': the database is unavailable", execution_id="e2"),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: DSPexError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)


def test_codes_are_stable_and_unique() -> None:
    codes = {type(e): e.code for e in ALL_ERRORS}
    assert len(set(codes.values())) == len(codes)
    assert codes[SignatureError] == "signature_error"
    assert codes[LMError] == "lm_error"
    assert codes[DatabaseUnavailable] == "database_unavailable"


def test_hierarchy_separates_misuse_from_run_failures() -> None:
    for cls in (SignatureError, SpecError, ConfigurationError, ValidationError):
        assert issubclass(cls, UserError)
        assert not issubclass(cls, RunError)
    assert issubclass(LMError, RunError)


def test_docstring_tree_names_every_error() -> None:
    doc = errors.__doc__ or ""
    for error in ALL_ERRORS:
        assert type(error).__name__ in doc


def test_spec_error_says_where() -> None:
    assert str(SpecError("unknown module 'x'", path="steps[2].module", line=7)) == (
        "unknown module 'x' at steps[2].module (line 7)"
    )


def test_did_you_mean_hints_and_lists() -> None:
    message = did_you_mean("chain_of_thougt", ["predict", "chain_of_thought"], what="module")
    assert message == (
        "unknown module 'chain_of_thougt'; did you mean 'chain_of_thought'? valid: chain_of_thought, predict"
    )
    assert "did you mean" not in did_you_mean("zzz", ["predict"], what="module")
