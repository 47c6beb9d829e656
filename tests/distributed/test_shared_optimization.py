"""Several driver processes sharing one optimization: two real OS processes on SQLite and PostgreSQL give
contiguous, unique trial numbers and exactly the requested finished trials; a SIGKILLed driver's running
trial is marked failed and redone while the other driver continues; leases decide for other machines."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dspy
import pytest
import sqlalchemy as sa
from optuna.distributions import FloatDistribution, distribution_to_json

from dspex.distributed.drivers import Driver, gone, this_driver
from dspex.distributed.optimize import ParallelOptimizer
from dspex.errors import ConfigurationError
from dspex.optimize import HolisticOptimizer, exact_match
from dspex.store import open_database
from dspex.store._engine import Database
from dspex.store.optimizations import OptimizationRecord, OptimizationRepository, TrialRecord
from dspex.store.schema import optimization_trials, optimizations
from dspex.testing import ScriptedEngine
from dspex.variables import Variable, VariableSpace, bind

WORKER = Path(__file__).with_name("parallel_worker.py")
N_TRIALS = 16


def _start(url: str, run: str, role: str, scale: float = 2.0) -> subprocess.Popen[bytes]:
    # 80 ms an LM call (scale 2), 10 examples two at a time: about 0.4 s a trial, two at once per driver.
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, run, str(N_TRIALS), "2", role, str(scale)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )


def _end(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out.decode(), err.decode()[-3000:]


def _trials(repo: OptimizationRepository, run: str) -> list[TrialRecord]:
    try:
        return repo.trials(run)
    except Exception:  # the tables may not exist yet while the first driver migrates the database
        return []


def _pid(trial: TrialRecord) -> int | None:
    parsed = Driver.parse(trial.driver or "")
    return parsed.pid if parsed is not None else None


def _check_ledger(trials: list[TrialRecord]) -> None:
    assert [t.number for t in trials] == list(range(len(trials)))  # contiguous from 0, none twice
    assert sum(t.state in ("complete", "pruned") for t in trials) == N_TRIALS
    assert not [t for t in trials if t.state == "running"]


def _wait_for(condition: object, processes: list[subprocess.Popen[bytes]], what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if condition():
            return
        for p in processes:
            assert p.poll() is None, f"a driver ended before {what}: {p.communicate()[1].decode()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def test_two_driver_processes_share_one_run(database_url: str) -> None:
    owner = _start(database_url, "shared", "own")
    joiner = _start(database_url, "shared", "join")
    results = [_end(owner), _end(joiner)]
    for code, out, err in results:
        assert code == 0, err
        assert out.strip() == f"finished {N_TRIALS}"
    db = open_database(database_url)
    try:
        repo = OptimizationRepository(db)
        trials = repo.trials("shared")
        run = repo.get("shared")
    finally:
        db.dispose()
    _check_ledger(trials)
    assert len(trials) == N_TRIALS  # nobody died, so no trial failed
    assert {_pid(t) for t in trials} == {owner.pid, joiner.pid}  # both drivers ran trials
    assert run.status == "succeeded"  # the owner ended the run; the joiner left it alone
    assert run.best is not None


@pytest.mark.parametrize("victim", ["join", "own"])
def test_a_killed_driver_s_trial_is_redone_while_the_other_continues(database_url: str, victim: str) -> None:
    owner = _start(database_url, "kill", "own")
    joiner = _start(database_url, "kill", "join")
    killed, survivor = (joiner, owner) if victim == "join" else (owner, joiner)
    db = open_database(database_url)
    repo = OptimizationRepository(db)
    try:
        # Kill it mid-trial, once both drivers have finished trials of their own. The running trial must
        # have started under 150 ms ago (a trial takes about 0.4 s), so it cannot end between this read
        # and the kill.
        def mid_run() -> bool:
            trials = _trials(repo, "kill")
            done = {_pid(t) for t in trials if t.state == "complete"}
            now = dt.datetime.now(dt.UTC)
            return {owner.pid, joiner.pid} <= done and any(
                t.state == "running"
                and _pid(t) == killed.pid
                and now - t.started_at < dt.timedelta(milliseconds=150)
                for t in trials
            )

        _wait_for(mid_run, [owner, joiner], "both drivers ran trials")
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        code, out, err = _end(survivor)
        assert code == 0, err
        assert out.strip() == f"finished {N_TRIALS}"
        trials = repo.trials("kill")
        _check_ledger(trials)
        # Cut off by the kill (it had trials running, each about 0.4 s long): failed, not counted, and
        # redone under later numbers by the survivor.
        cut = [t for t in trials if _pid(t) == killed.pid and t.state != "complete"]
        assert cut
        assert {t.state for t in cut} == {"failed"}
        assert all("stopped" in (t.error or "") for t in cut)
        assert max(t.number for t in trials) > max(t.number for t in cut)
        if victim == "join":
            assert repo.get("kill").status == "succeeded"
            return
        # The owner died: the joiner spent the budget, and the run waits for its owner to end it.
        assert repo.get("kill").status == "running"
        restarted = _start(database_url, "kill", "own")
        code, out, err = _end(restarted)
        assert code == 0, err
        assert out.strip() == f"finished {N_TRIALS}"
        assert repo.trials("kill") == trials  # nothing left to run: the resumed owner only ended the run
        assert repo.get("kill").status == "succeeded"
    finally:
        for p in (owner, joiner):
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
        db.dispose()


# -- leases: drivers on other machines ----------------------------------------------------------------------


def _running_trial(db: Database, run: str, driver: str | None, lease: dt.datetime | None) -> int:
    repo = OptimizationRepository(db)
    distribution = distribution_to_json(FloatDistribution(0.0, 1.5))
    number = repo.start_trial(run, {"values": {"t": 0.5}, "distributions": {"t": distribution}})
    with db.write() as connection:
        connection.execute(
            sa.update(optimization_trials)
            .where(optimization_trials.c.optimization_id == run, optimization_trials.c.number == number)
            .values(driver=driver, lease_expires_at=lease)
        )
    return number


def test_of_two_owners_started_at_once_one_owns_the_run_and_the_other_is_told_to_join(
    database_url: str,
) -> None:
    # Slower trials (about 0.8 s): the first owner is still running when the second one asks for the run.
    first, second = _start(database_url, "owned", "own", 4.0), _start(database_url, "owned", "own", 4.0)
    results = {first.pid: _end(first), second.pid: _end(second)}
    winners = [pid for pid, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    assert results[winners[0]][1].strip() == f"finished {N_TRIALS}"
    assert "already has an owner" in results[loser][2]
    assert "join=True" in results[loser][2]
    db = open_database(database_url)
    try:
        repo = OptimizationRepository(db)
        trials, run = repo.trials("owned"), repo.get("owned")
        with db.read() as connection:
            owner = connection.execute(
                sa.select(optimizations.c.owner).where(optimizations.c.id == "owned")
            ).scalar_one()
    finally:
        db.dispose()
    _check_ledger(trials)
    assert {_pid(t) for t in trials} == set(winners)  # the refused owner ran no trial
    assert run.status == "succeeded"
    assert owner is None  # released when the owner ended


def test_ownership_is_one_live_driver_at_a_time(database_url: str) -> None:
    db = open_database(database_url)
    try:
        repo = OptimizationRepository(db)
        me = this_driver()
        assert repo.claim_owner("o", driver=me.id, lease_s=30, gone=lambda o: False) is None  # no run yet
        repo.create(OptimizationRecord("o", None, {}, ["quality"], {"n_trials": 9}, {}))
        elsewhere = "other-host/4242/feedfacecafe/0badc0de"
        assert repo.claim_owner("o", driver=elsewhere, lease_s=30, gone=lambda o: gone(o, me=me)) is None
        # A live owner elsewhere: refused, and it stays the owner.
        assert repo.claim_owner("o", driver=me.id, lease_s=30, gone=lambda o: gone(o, me=me)) == elsewhere
        assert repo.renew_owner("o", elsewhere, 30)
        assert not repo.renew_owner("o", me.id, 30)
        # Its lease passes: taken over.
        with db.write() as connection:
            connection.execute(
                sa.update(optimizations)
                .where(optimizations.c.id == "o")
                .values(owner_lease_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
            )
        assert repo.claim_owner("o", driver=me.id, lease_s=30, gone=lambda o: gone(o, me=me)) is None
        # A dead owner on this machine: taken over at once, whatever its lease.
        dead = Driver(me.host, 2**22 + 7, me.place, "deadbeef").id
        repo.release_owner("o", me.id)
        assert repo.claim_owner("o", driver=dead, lease_s=300, gone=lambda o: False) is None
        assert repo.claim_owner("o", driver=me.id, lease_s=30, gone=lambda o: gone(o, me=me)) is None
        repo.release_owner("o", dead)  # not the owner any more: a no-op
        assert repo.claim_owner("o", driver=elsewhere, lease_s=30, gone=lambda o: False) == me.id
    finally:
        db.dispose()


def test_a_claim_marks_failed_only_the_trials_of_gone_drivers(database_url: str) -> None:
    db = open_database(database_url)
    try:
        repo = OptimizationRepository(db)
        repo.create(OptimizationRecord("r", None, {}, ["quality"], {"n_trials": 9}, {}))
        me = this_driver()
        now = dt.datetime.now(dt.UTC)
        elsewhere = "other-host/4242/feedfacecafe/0badc0de"  # another machine: only its lease tells
        live = _running_trial(db, "r", elsewhere, now + dt.timedelta(minutes=5))
        lapsed = _running_trial(db, "r", elsewhere, now - dt.timedelta(seconds=1))
        legacy = _running_trial(db, "r", None, None)  # a single driver's row (or from before 0014)
        dead_here = _running_trial(db, "r", Driver(me.host, 2**22 + 7, me.place, "deadbeef").id, None)
        number, board = repo.claim_trial(
            "r",
            driver=me.id,
            lease_s=30,
            since=0,
            watch=(),
            gone=lambda other: gone(other, me=me),
            decide=lambda board: None,  # no new trial: only look
            reason="gone",
        )
        assert number is None
        assert board.reaped == (lapsed, legacy, dead_here)
        assert board.running == 1
        states = {t.number: (t.state, t.error) for t in repo.trials("r")}
        assert states[live] == ("running", None)
        assert {states[n] for n in board.reaped} == {("failed", "gone")}
        # The live one renews its lease; a claim that takes a trial numbers it next.
        assert repo.renew_trials("r", elsewhere, 60) == 1
        number, board = repo.claim_trial(
            "r",
            driver=me.id,
            lease_s=30,
            since=4,
            watch=(),
            gone=lambda other: gone(other, me=me),
            decide=lambda board: {"values": {}, "distributions": {}},
            reason="gone",
        )
        assert number == 4
        assert board.rows == ()  # nothing new since number 4
        assert repo.trials("r")[4].driver == me.id
    finally:
        db.dispose()


def test_gone_knows_only_its_own_machine() -> None:
    me = this_driver()
    assert not gone(me.id, me=me)  # this process
    assert not gone(Driver(me.host, os.getppid(), me.place, "x").id, me=me)  # alive, same machine
    assert gone(Driver(me.host, 2**22 + 7, me.place, "x").id, me=me)  # no such pid here
    assert not gone(Driver("far", 2**22 + 7, "elsewhere000", "x").id, me=me)  # another machine: its lease
    assert not gone("not a driver id", me=me)


# -- joining ---------------------------------------------------------------------------------------------


def _scripted(n_trials: int, *, join: bool, lease_s: float = 30.0) -> ParallelOptimizer:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    return ParallelOptimizer(
        VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
        [bind.temperature("temperature")],
        exact_match,
        n_trials=n_trials,
        pruning=False,
        lm=engine.lm(cache=False),
        concurrency=2,
        parallel=2,
        join=join,
        lease_s=lease_s,
        poll_s=0.05,
    )


def test_joining_needs_a_running_run_with_the_same_inputs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    program = dspy.Predict("question -> answer")
    devset = [dspy.Example(question=q, answer=q.upper()).with_inputs("question") for q in ("a", "b", "c")]
    with pytest.raises(ConfigurationError, match="no optimization 'r' to join; start it first"):
        _scripted(3, join=True).optimize(program, devset, db=url, optimization_id="r")
    owned = _scripted(3, join=False).optimize(program, devset, db=url, optimization_id="r")
    assert owned.finished == 3
    with pytest.raises(ConfigurationError, match="'r' is succeeded; there is nothing to join"):
        _scripted(3, join=True).optimize(program, devset, db=url, optimization_id="r")
    with pytest.raises(ConfigurationError, match="started with another budget; join it with the same inputs"):
        _scripted(4, join=True).optimize(program, devset, db=url, optimization_id="r")
    db = open_database(url)
    try:
        assert OptimizationRepository(db).get("r").status == "succeeded"  # the joiners changed nothing
    finally:
        db.dispose()


def test_an_owner_waits_one_lease_for_an_owner_on_another_machine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    program = dspy.Predict("question -> answer")
    devset = [dspy.Example(question=q, answer=q.upper()).with_inputs("question") for q in ("a", "b", "c")]
    assert _scripted(3, join=False).optimize(program, devset, db=url, optimization_id="r").finished == 3
    db = open_database(url)
    elsewhere = "other-host/4242/feedfacecafe/0badc0de"  # its death cannot be seen from here: its lease tells

    def owned_elsewhere(for_s: float) -> None:
        with db.write() as connection:
            connection.execute(
                sa.update(optimizations)
                .where(optimizations.c.id == "r")
                .values(
                    owner=elsewhere,
                    owner_lease_expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=for_s),
                )
            )

    try:
        # Its worker died (a job retried on another machine): its lease lapses while this owner waits.
        owned_elsewhere(1.0)
        started = time.monotonic()
        assert (
            _scripted(3, join=False, lease_s=5.0)
            .optimize(program, devset, db=url, optimization_id="r")
            .finished
            == 3
        )
        assert time.monotonic() - started > 0.5
        # Alive (its lease holds): refused after one lease of waiting, the run untouched.
        owned_elsewhere(600)
        with pytest.raises(ConfigurationError, match=f"already has an owner, driver {elsewhere}"):
            _scripted(3, join=False, lease_s=0.5).optimize(program, devset, db=url, optimization_id="r")
        assert OptimizationRepository(db).get("r").status == "succeeded"
    finally:
        db.dispose()


def _serial(n_trials: int, lease_s: float = 30.0) -> HolisticOptimizer:
    engine = ScriptedEngine({"answer": lambda inputs: inputs["question"].upper()})
    optimizer = HolisticOptimizer(
        VariableSpace([Variable.float("temperature", 0.0, 1.5)]),
        [bind.temperature("temperature")],
        exact_match,
        n_trials=n_trials,
        pruning=False,
        lm=engine.lm(cache=False),
        concurrency=2,
    )
    optimizer.lease_s, optimizer.poll_s = lease_s, 0.05
    return optimizer


def _owner(db: Database, run: str) -> str | None:
    with db.read() as connection:
        owner = connection.execute(sa.select(optimizations.c.owner).where(optimizations.c.id == run)).scalar()
    return None if owner is None else str(owner)


def test_a_serial_optimizer_respects_the_owner_of_a_run(database_url: str) -> None:
    program = dspy.Predict("question -> answer")
    devset = [dspy.Example(question=q, answer=q.upper()).with_inputs("question") for q in ("a", "b", "c")]
    seen: list[str | None] = []
    refused: list[str] = []

    def while_serial_runs(progress: object) -> None:  # a shared owner asks while the serial one holds it
        seen.append(_owner(db, "s"))
        try:
            _scripted(3, join=False).optimize(program, devset, db=database_url, optimization_id="s")
        except ConfigurationError as exc:
            refused.append(str(exc))

    db = open_database(database_url)
    try:
        assert _serial(2).optimize(
            program, devset, db=database_url, optimization_id="s", on_trial=while_serial_runs
        )
        assert seen[0] is not None
        assert Driver.parse(seen[0]) is not None  # the serial optimizer owned its run
        assert refused
        assert "already has an owner" in refused[0]
        repo = OptimizationRepository(db)
        assert _owner(db, "s") is None  # released when it ended
        trials = len(repo.trials("s"))
        elsewhere = "other-host/4242/feedfacecafe/0badc0de"

        def owned_elsewhere(for_s: float) -> None:
            with db.write() as connection:
                connection.execute(
                    sa.update(optimizations)
                    .where(optimizations.c.id == "s")
                    .values(
                        owner=elsewhere,
                        owner_lease_expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=for_s),
                    )
                )

        # A live shared owner elsewhere (its lease holds): the serial resume is refused, the run untouched.
        owned_elsewhere(600)
        with pytest.raises(
            ConfigurationError, match=r"already has an owner, driver other-host.*wait.*--join"
        ):
            _serial(4, lease_s=0.3).optimize(program, devset, db=database_url, optimization_id="s")
        assert repo.get("s").status == "succeeded"
        assert _owner(db, "s") == elsewhere
        assert len(repo.trials("s")) == trials
        # Its lease lapsed: the serial optimizer takes the run over and resumes it.
        owned_elsewhere(-1)
        resumed = _serial(4, lease_s=0.3).optimize(program, devset, db=database_url, optimization_id="s")
        assert resumed.finished == 4
        assert repo.get("s").status == "succeeded"
        assert _owner(db, "s") is None
    finally:
        db.dispose()
