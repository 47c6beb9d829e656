"""Version lifecycle: draft -> optimizing -> production -> archived, promote, rollback, one production."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from programs_sample import build_qa

from dspex.errors import ConfigurationError
from dspex.programs import ProgramRegistry, ProgramVersion
from dspex.store import Database, open_database
from dspex.store.schema import program_versions


@pytest.fixture
def registry(database_url: str) -> Iterator[ProgramRegistry]:
    db = open_database(database_url)
    yield ProgramRegistry(db)
    db.dispose()


def make_versions(registry: ProgramRegistry, count: int, name: str = "qa") -> list[ProgramVersion]:
    """``count`` distinct versions of ``name``: the registered one, then ones with more demos each."""
    versions = [registry.register(name, "programs_sample:build_qa")]
    for k in range(1, count):
        program = build_qa()
        program.predict.demos = [{"question": f"q{i}", "reasoning": "r", "answer": "a"} for i in range(k)]
        versions.append(registry.save_version(name, program))
    return versions


def statuses(registry: ProgramRegistry, name: str = "qa") -> dict[str, str]:
    return {v.id: v.status for v in registry.versions(name)}


def production_count(db: Database, name: str = "qa") -> int:
    c = program_versions.c
    query = sa.select(sa.func.count()).where(c.program == name, c.status == "production")
    with db.read() as connection:
        return int(connection.execute(query).scalar_one())


def test_promote_archives_the_previous_production(registry: ProgramRegistry) -> None:
    v1, v2, v3 = make_versions(registry, 3)
    promoted = registry.promote("qa", v1.id)
    assert promoted.status == "production"
    assert promoted.promoted_at is not None
    assert promoted.promoted_at.tzinfo is not None
    registry.promote("qa", v2.id)
    assert statuses(registry) == {v1.id: "archived", v2.id: "production", v3.id: "draft"}
    assert registry.promote("qa", v2.id).status == "production"  # promoting production is a no-op
    registry.promote("qa", v1.id)  # an archived version can be promoted again
    assert statuses(registry) == {v1.id: "archived", v2.id: "archived", v3.id: "draft"} | {
        v1.id: "production"
    }
    assert production_count(registry.db) == 1


def test_rollback_walks_back_through_earlier_promotions(registry: ProgramRegistry) -> None:
    v1, v2, v3 = make_versions(registry, 3)
    with pytest.raises(ConfigurationError, match="no production version to roll back from"):
        registry.rollback("qa")
    registry.promote("qa", v1.id)
    with pytest.raises(ConfigurationError, match="nothing to roll back to"):
        registry.rollback("qa")
    registry.promote("qa", v2.id)
    registry.promote("qa", v3.id)
    assert registry.rollback("qa").id == v2.id
    assert statuses(registry) == {v1.id: "archived", v2.id: "production", v3.id: "archived"}
    assert registry.rollback("qa").id == v1.id  # undo again: one more promotion back
    assert statuses(registry) == {v1.id: "production", v2.id: "archived", v3.id: "archived"}
    with pytest.raises(ConfigurationError, match="nothing to roll back to"):
        registry.rollback("qa")
    assert registry.resolve("qa").id == v1.id


def test_rollback_after_a_rollback_and_a_new_promotion(registry: ProgramRegistry) -> None:
    v1, v2, v3 = make_versions(registry, 3)
    registry.promote("qa", v1.id)
    registry.promote("qa", v2.id)
    registry.rollback("qa")  # v1 production, v2 archived and not a rollback target
    registry.promote("qa", v3.id)
    assert registry.rollback("qa").id == v1.id


def test_set_status_allows_only_the_documented_transitions(registry: ProgramRegistry) -> None:
    v1, v2, v3 = make_versions(registry, 3)
    assert registry.set_status(v1.id, "optimizing").status == "optimizing"
    assert registry.set_status(v1.id, "optimizing").status == "optimizing"  # same status: no-op
    assert registry.set_status(v1.id, "draft").status == "draft"
    assert registry.set_status(v2.id, "archived").status == "archived"
    with pytest.raises(
        ConfigurationError, match=r"is archived; it cannot become draft \(it can only be promoted"
    ):
        registry.set_status(v2.id, "draft")
    with pytest.raises(ConfigurationError, match="only by promote"):
        registry.set_status(v1.id, "production")
    registry.promote("qa", v3.id)
    with pytest.raises(ConfigurationError, match="leaves production only when another version is promoted"):
        registry.set_status(v3.id, "archived")
    with pytest.raises(ConfigurationError, match="unknown version status 'archive'; did you mean 'archived'"):
        registry.set_status(v1.id, "archive")  # type: ignore[arg-type]  # misuse on purpose
    with pytest.raises(ConfigurationError, match="unknown program version 'nope'"):
        registry.set_status("nope", "archived")
    assert statuses(registry) == {v1.id: "draft", v2.id: "archived", v3.id: "production"}


def test_promote_checks_program_and_version(registry: ProgramRegistry) -> None:
    (v1,) = make_versions(registry, 1)
    (other,) = make_versions(registry, 1, name="other")
    with pytest.raises(ConfigurationError, match="it belongs to program 'other'"):
        registry.promote("qa", other.id)
    with pytest.raises(ConfigurationError, match="unknown program 'q'"):
        registry.promote("q", v1.id)
    with pytest.raises(ConfigurationError, match="unknown program 'nope'"):
        registry.rollback("nope")


def test_the_database_refuses_a_second_production_version(registry: ProgramRegistry) -> None:
    v1, v2 = make_versions(registry, 2)
    registry.promote("qa", v1.id)
    with pytest.raises(sa.exc.IntegrityError), registry.db.write() as connection:
        connection.execute(
            sa.update(program_versions).where(program_versions.c.id == v2.id).values(status="production")
        )
    assert production_count(registry.db) == 1


def test_concurrent_promotions_leave_exactly_one_production(registry: ProgramRegistry) -> None:
    versions = make_versions(registry, 4)
    url = registry.db.url.render_as_string(hide_password=False)
    # One Database per thread, as two processes would have: no shared in-process write lock.
    registries = [ProgramRegistry(Database(url)) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def promote_many(worker: int) -> None:
        try:
            barrier.wait()
            for round_ in range(6):
                target = versions[(worker + 2 * round_) % len(versions)]
                registries[worker].promote("qa", target.id)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=promote_many, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in registries:
        other.db.dispose()
    assert errors == []
    assert production_count(registry.db) == 1
    assert sorted(statuses(registry).values()) == ["archived", "archived", "archived", "production"]
