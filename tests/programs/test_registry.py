"""Registering programs, saving versions as JSON, and loading them back with the same behaviour."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import dspy
import programs_sample
import pytest
import sqlalchemy as sa
from programs_sample import build_qa, saved_lm

from dspex.errors import ConfigurationError, SpecError
from dspex.programs import ProgramRegistry
from dspex.store import open_database
from dspex.testing.engine import ScriptedEngine

QA_SPEC: dict[str, Any] = {
    "module": "chain_of_thought",
    "signature": "question -> answer",
    "options": {"temperature": 0.2},
    "lm": {"model": "openai/gpt-4o-mini", "temperature": 0.3, "max_tokens": 500},
}


@pytest.fixture
def registry(database_url: str) -> Iterator[ProgramRegistry]:
    db = open_database(database_url)
    yield ProgramRegistry(db)
    db.dispose()


def fresh(registry: ProgramRegistry) -> ProgramRegistry:
    """Another registry on the same database: an empty cache, as in another process."""
    return ProgramRegistry(registry.db)


def optimized_qa() -> dspy.Module:
    """What an optimizer leaves behind: demos, new instructions, a per-predictor temperature."""
    program = build_qa()
    predict = program.predict
    predict.demos = [
        dspy.Example(question="2 + 2?", reasoning="add", answer="4"),
        dspy.Example(question="capital of France?", reasoning="geography", answer="Paris"),
    ]
    predict.signature = predict.signature.with_instructions("Answer in one word.")
    predict.config = {"temperature": 0.7, "n": 1}
    return program


# -- registering ---------------------------------------------------------------------------------------
def test_register_from_an_import_path_creates_a_draft(registry: ProgramRegistry) -> None:
    version = registry.register("qa", "programs_sample:build_qa", description="answers questions")
    assert version.program == "qa"
    assert version.status == "draft"
    assert len(version.id) == 64
    assert version.dspy_version == dspy.__version__
    assert version.state["source"] == {"v": 1, "kind": "import", "path": "programs_sample:build_qa"}
    program = registry.get("qa")
    assert program.description == "answers questions"
    assert program.created_at.tzinfo is not None
    assert isinstance(registry.load("qa"), dspy.ChainOfThought)
    assert [p.name for p in registry.list_programs()] == ["qa"]


def test_register_from_a_spec_keeps_options_and_lm_settings(registry: ProgramRegistry) -> None:
    version = registry.register("qa", QA_SPEC)
    assert version.state["config"] == {"predict": {"temperature": 0.2}}
    assert version.state["dspy"]["predict"]["lm"]["model"] == "openai/gpt-4o-mini"
    program = fresh(registry).load("qa")
    assert program.predict.config == {"temperature": 0.2}
    assert program.predict.lm.model == "openai/gpt-4o-mini"
    assert program.predict.lm.kwargs["temperature"] == 0.3
    assert program.predict.lm.kwargs["max_tokens"] == 500


def test_registering_again_is_idempotent_and_keeps_the_description(registry: ProgramRegistry) -> None:
    first = registry.register("qa", "programs_sample:build_qa", description="kept")
    again = registry.register("qa", "programs_sample:build_qa")
    assert again.id == first.id
    assert len(registry.versions("qa")) == 1
    assert registry.get("qa").description == "kept"


def test_another_source_needs_replace_and_old_versions_still_load(registry: ProgramRegistry) -> None:
    old = registry.register("qa", "programs_sample:build_qa")
    with pytest.raises(ConfigurationError, match=r"already registered from import path.*replace=True"):
        registry.register("qa", "programs_sample:build_pipeline")
    new = registry.register("qa", "programs_sample:build_pipeline", replace=True)
    assert registry.get("qa").source["path"] == "programs_sample:build_pipeline"
    assert isinstance(fresh(registry).load("qa", new.id), programs_sample.Pipeline)
    # Each version keeps the source it was saved against.
    assert isinstance(fresh(registry).load("qa", old.id), dspy.ChainOfThought)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("programs_sample.build_qa", "looks like 'package.module:factory'"),
        ("dspex_no_such_module:build", "no module named 'dspex_no_such_module'"),
        ("programs_sample_bad:build", "importing module 'programs_sample_bad'.*dspex_missing_dependency"),
        ("programs_sample:build_qaa", "unknown attribute 'build_qaa'; did you mean 'build_qa'"),
        ("programs_sample:NOT_CALLABLE", "is a int, not a factory"),
        ("programs_sample:not_a_module", "returned int, not a dspy.Module"),
        ("programs_sample:broken", "raised RuntimeError: the index is not built"),
    ],
)
def test_bad_import_paths_say_what_is_wrong(registry: ProgramRegistry, path: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        registry.register("qa", path)
    assert registry.list_programs() == []


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"module": "chain_of_thougt", "signature": "q -> a"}, "module", "did you mean 'chain_of_thought'"),
        ({"module": "predict", "signature": "q -> a", "lmm": {}}, "lmm", "did you mean 'lm'"),
        ({"module": "predict", "signature": "q, q -> a"}, "signature", "duplicate"),
        ({"module": "predict", "signature": "q -> a", "lm": {"temperature": 0}}, "lm.model", "needs 'model'"),
        ({"module": "predict", "signature": "q -> a", "lm": "gpt"}, "lm", "mapping"),
        (
            {"module": "predict", "signature": "q -> a", "lm": {"model": "openai/x", "api_key": "sk-1"}},
            "lm.api_key",
            "credential",
        ),
        (
            {"module": "predict", "signature": "q -> a", "options": {"n": {1, 2}}},
            "options.n",
            "not JSON",
        ),
    ],
)
def test_bad_specs_raise_spec_errors_with_paths(
    registry: ProgramRegistry, spec: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        registry.register("qa", spec)
    assert caught.value.path == path


@pytest.mark.parametrize("name", ["", "has space", "a/b", "-leading", "x" * 201])
def test_program_names_are_checked(registry: ProgramRegistry, name: str) -> None:
    with pytest.raises(ConfigurationError, match="a program name is"):
        registry.register(name, "programs_sample:build_qa")


def test_unknown_programs_and_versions_get_hints(registry: ProgramRegistry) -> None:
    with pytest.raises(ConfigurationError, match="no program is registered yet"):
        registry.load("qa")
    version = registry.register("support-qa", "programs_sample:build_qa")
    with pytest.raises(ConfigurationError, match="unknown program 'support_qa'; did you mean 'support-qa'"):
        registry.load("support_qa")
    with pytest.raises(
        ConfigurationError, match=rf"unknown version 'abc' of program 'support-qa'.*{version.id[:12]}"
    ):
        registry.load("support-qa", "abc")
    registry.register("other", "programs_sample:build_predict")
    other = registry.versions("other")[0]
    with pytest.raises(ConfigurationError, match="it belongs to program 'other'"):
        registry.load("support-qa", other.id)
    with pytest.raises(ConfigurationError, match="unknown program version 'nope'"):
        registry.version("nope")


# -- versions ------------------------------------------------------------------------------------------
def test_saving_the_same_state_twice_gives_one_version(registry: ProgramRegistry) -> None:
    registered = registry.register("qa", "programs_sample:build_qa")
    assert registry.save_version("qa", registry.load("qa")).id == registered.id
    first = registry.save_version("qa", optimized_qa(), note="first", status="optimizing")
    second = registry.save_version("qa", optimized_qa(), note="second")
    assert second == first  # the existing version, untouched: status and note stay
    assert (first.status, first.note) == ("optimizing", "first")
    assert len(registry.versions("qa")) == 2
    with_variables = registry.save_version("qa", optimized_qa(), variables={"temperature": 0.7})
    assert with_variables.id != first.id
    assert with_variables.variables == {"temperature": 0.7}
    registry.register("qa2", "programs_sample:build_qa")
    assert registry.save_version("qa2", optimized_qa()).id != first.id  # the name is part of the hash


def test_a_loaded_version_behaves_the_same(registry: ProgramRegistry) -> None:
    registry.register("qa", "programs_sample:build_qa")
    original = optimized_qa()
    version = registry.save_version("qa", original)
    loaded = fresh(registry).load("qa", version.id)
    assert loaded is not original
    assert loaded.predict.config == {"temperature": 0.7, "n": 1}

    engine = ScriptedEngine({"answer": lambda inputs: f"A:{inputs['question']}", "reasoning": "thinking"})
    with dspy.context(lm=engine.lm("qa")):
        before = original(question="What is DSPy?")
        after = loaded(question="What is DSPy?")
    assert after.toDict() == before.toDict() == {"reasoning": "thinking", "answer": "A:What is DSPy?"}
    sent_before, sent_after = engine.history[-2].prompt, engine.history[-1].prompt
    assert sent_after.demos == sent_before.demos == 2
    assert "Answer in one word." in sent_after.instructions
    assert sent_after.text == sent_before.text  # byte for byte the same request


def test_per_predictor_lms_and_config_are_restored(registry: ProgramRegistry) -> None:
    registry.register("pipeline", "programs_sample:build_pipeline")
    program = programs_sample.build_pipeline()
    program.classify.lm = saved_lm("topic:", temperature=0.1)
    program.respond.config = {"temperature": 0.9}
    version = registry.save_version("pipeline", program)
    stored = version.state["dspy"]
    assert stored["classify"]["lm"]["engine"]["state"] == {"prefix": "topic:"}
    assert stored["respond"]["lm"] is None

    loaded = fresh(registry).load("pipeline")
    assert loaded.classify.lm.kwargs["temperature"] == 0.1
    assert loaded.classify.config == {}
    assert loaded.respond.config == {"temperature": 0.9}
    assert loaded.respond.lm is None
    context = ScriptedEngine({"answer": "from the context LM"})
    with dspy.context(lm=context.lm("ctx")):
        result = loaded(question="q1")
    assert result.answer == "from the context LM"
    assert context.calls == 1  # classify ran on its own saved LM, not on the context LM


def test_a_bare_predict_round_trips(registry: ProgramRegistry) -> None:
    registry.register("p", "programs_sample:build_predict")
    program = programs_sample.build_predict()
    program.demos = [dspy.Example(question="q", answer="a")]
    program.config = {"temperature": 0.4}
    version = registry.save_version("p", program)
    loaded = fresh(registry).load("p", version.id)
    assert loaded.config == {"temperature": 0.4}
    assert [d["answer"] for d in loaded.demos] == ["a"]


def test_unsaveable_and_unloadable_lms_are_explained(
    registry: ProgramRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("qa", "programs_sample:build_qa")
    program = build_qa()
    program.predict.lm = ScriptedEngine({}).lm("plain")
    with pytest.raises(
        ConfigurationError, match=r"predictor 'predict' uses LM 'scripted/plain'.*cannot be saved"
    ):
        registry.save_version("qa", program)

    program.predict.lm = saved_lm("x:")
    version = registry.save_version("qa", program)
    monkeypatch.delattr(programs_sample, "SavedEngine")  # the class is gone where the program loads
    with pytest.raises(
        ConfigurationError, match=r"custom engine `programs_sample:SavedEngine`.*cannot be rebuilt"
    ):
        fresh(registry).load("qa", version.id)


def test_non_json_state_and_structure_mismatches_are_refused(registry: ProgramRegistry) -> None:
    registry.register("qa", "programs_sample:build_qa")
    program = build_qa()
    program.predict.config = {"stop": object()}
    with pytest.raises(ConfigurationError, match=r"builtins.object is not JSON.*at predict.config.stop"):
        registry.save_version("qa", program)
    with pytest.raises(ConfigurationError, match=r"at variables\.k"):
        registry.save_version("qa", build_qa(), variables={"k": float("nan")})
    with pytest.raises(ConfigurationError, match="saved for a program with predictors"):
        registry.save_version("qa", programs_sample.build_pipeline())
    with pytest.raises(ConfigurationError, match="a new version is 'draft' or 'optimizing'"):
        registry.save_version("qa", build_qa(), status="production")  # type: ignore[arg-type]  # misuse on purpose
    with pytest.raises(ConfigurationError, match="unknown program version"):
        registry.save_version("qa", build_qa(), parent_id="nope")
    assert len(registry.versions("qa")) == 1


def test_only_json_is_stored(registry: ProgramRegistry) -> None:
    registry.register("qa", QA_SPEC)
    registry.save_version("qa", optimized_qa(), variables={"style": "terse"})
    with registry.db.read() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT CAST(v.state AS TEXT), CAST(v.variables AS TEXT), CAST(p.source AS TEXT) "
                "FROM program_versions v JOIN programs p ON p.name = v.program"
            )
        ).all()
    assert len(rows) == 2
    for row in rows:
        for text in row:
            if text is None:
                continue
            json.loads(text)
            assert "pickle" not in text
            assert "__repr__" not in text
            assert "\\u0080" not in text  # a pickle stream starts with 0x80
    for version in registry.versions("qa"):
        assert json.loads(json.dumps(version.to_json())) == version.to_json()


def test_loaded_programs_are_cached_per_version_and_copied(registry: ProgramRegistry) -> None:
    small = ProgramRegistry(registry.db, cache_size=1)
    builds = programs_sample.BUILDS
    v1 = small.register("qa", "programs_sample:build_qa")  # built, then rebuilt from the stored state
    start = builds["qa"]
    first = small.load("qa")
    second = small.load("qa")
    assert builds["qa"] == start  # served from the cache
    assert first is not second
    first.predict.demos.append(dspy.Example(question="q", answer="a"))
    assert small.load("qa").predict.demos == []  # a caller's change never reaches the cache

    v2 = small.save_version("qa", optimized_qa())  # its rebuild takes the only cache slot
    built = builds["qa"]
    small.load("qa", v2.id)
    assert builds["qa"] == built
    small.load("qa", v1.id)
    assert builds["qa"] == built + 1  # v1 was evicted


def test_the_default_version_is_production_else_the_newest_draft(registry: ProgramRegistry) -> None:
    v1 = registry.register("qa", "programs_sample:build_qa")
    assert registry.resolve("qa").id == v1.id
    v2 = registry.save_version("qa", optimized_qa())
    assert registry.resolve("qa").id == v2.id
    registry.promote("qa", v1.id)
    assert registry.resolve("qa").id == v1.id
    assert registry.resolve("qa", v2.id[:8]).id == v2.id  # a unique prefix works too
    assert registry.load("qa", v2.id[:8]).predict.config == {"temperature": 0.7, "n": 1}


# -- versions whose structure comes from variable bindings ----------------------------------------------
def test_a_module_type_and_adapter_configuration_is_saved_and_loads_back_in_another_process(
    registry: ProgramRegistry,
) -> None:
    from dspex.variables import apply, bind
    from dspex.variables.binding import AdaptedPredict

    registry.register("plain", {"module": "predict", "signature": "question -> answer"})
    base = registry.load("plain")
    base.demos = [dspy.Example(question="2 + 2?", answer="4")]
    bindings = [bind.module_type("strategy"), bind.adapter("format", at="predict"), bind.temperature("t")]
    configuration = {"strategy": "chain_of_thought", "format": "json", "t": 0.4}
    configured = apply(base, configuration, bindings)
    assert isinstance(configured, dspy.ChainOfThought)

    version = registry.save_version(
        "plain", configured, variables=configuration, bindings=bindings, status="optimizing"
    )
    assert version.state["structure"]["configuration"] == {"strategy": "chain_of_thought", "format": "json"}
    loaded = fresh(registry).load("plain", version.id)  # an empty cache: rebuilt from the stored payload
    assert isinstance(loaded, dspy.ChainOfThought)
    assert isinstance(loaded.predict, AdaptedPredict)
    assert loaded.predict.adapter == "json"
    assert loaded.predict.config == {"temperature": 0.4}
    assert [dict(d)["answer"] for d in loaded.predict.demos] == ["4"]
    assert "reasoning" in loaded.predict.signature.output_fields

    engine = ScriptedEngine({"answer": "4", "reasoning": "add"})
    with dspy.context(lm=engine.lm()):
        assert loaded(question="2 + 2?").answer == "4"
    # Saved without its bindings, the same module cannot be a version: the source builds a Predict.
    with pytest.raises(ConfigurationError, match="saved for a program with predictors"):
        registry.save_version("plain", configured, variables=configuration)


def test_a_saved_structure_that_no_longer_applies_says_so(registry: ProgramRegistry) -> None:
    from dspex.variables import apply, bind

    registry.register("plain", {"module": "predict", "signature": "question -> answer"})
    bindings = [bind.module_type("strategy")]
    configured = apply(registry.load("plain"), {"strategy": "chain_of_thought"}, bindings)
    version = registry.save_version(
        "plain", configured, variables={"strategy": "chain_of_thought"}, bindings=bindings
    )
    with registry.db.write() as connection:
        broken = {
            **version.state,
            "structure": {**version.state["structure"], "configuration": {"strategy": "nope"}},
        }
        connection.execute(
            sa.text("UPDATE program_versions SET state = :state WHERE id = :id"),
            {"state": json.dumps(broken), "id": version.id},
        )
    with pytest.raises(
        ConfigurationError, match=r"saved structure .* does not apply.*did you mean|saved structure"
    ):
        fresh(registry).load("plain", version.id)
