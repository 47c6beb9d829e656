"""``App.optimize_with(..., pool=)`` on a pool of Ray actors: MIPROv2, GEPA and SIMBA end with the
program and score of the run in process, with their program calls (traced ones too) on the actors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_programs import prompt_aware_engine

from dspex.runtime.app import App
from dspex.settings import Settings

OPTIONS: dict[str, dict[str, Any]] = {
    "miprov2": {
        "num_candidates": 3,
        "num_trials": 6,
        "minibatch_size": 4,
        "minibatch_full_eval_steps": 2,
        "max_bootstrapped_demos": 1,
        "max_labeled_demos": 1,
        "num_threads": 4,
    },
    "gepa": {"max_metric_calls": 60, "reflection_minibatch_size": 3, "num_threads": 4},
    # SIMBA's every call is traced: the actors send the traces back (short: Ray is heavy on 2 cores).
    "simba": {"bsize": 4, "max_steps": 1, "num_candidates": 2, "num_threads": 1},
}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster (2 CPUs) for this module, stopped after it (as in test_ray_pool.py)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _app(home: Path) -> App:
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home}/r.db",
        pools={
            "prompted": {
                "backend": "ray",
                "size": 2,
                "actor_cpus": 0.5,
                "initializer": "dist_programs:prompt_aware",
            }
        },
    )
    app = App(settings, lm=prompt_aware_engine().lm(cache=False))
    app.programs.register("qa", "dist_programs:build_qa")
    rows = [
        {"question": f"q{i}", "answer": f"answer to q{i}", "part": "train" if i < 8 else "dev"}
        for i in range(18)
    ]
    app.datasets.import_records("qa-set", rows, inputs=["question"], split="part")
    return app


@pytest.fixture(scope="module")
def on_ray(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with _app(tmp_path_factory.mktemp("ray-opt")) as app:
        yield app


@pytest.mark.parametrize("optimizer", ["miprov2", "gepa", "simba"])
def test_a_dspy_optimizer_on_ray_actors_ends_as_in_process(
    on_ray: App, optimizer: str, tmp_path: Path
) -> None:
    with _app(tmp_path) as local:
        in_process = local.optimize_with(
            "qa", optimizer, dataset="qa-set", options=OPTIONS[optimizer], seed=3
        )
        expected = local.programs.build(local.programs.resolve("qa", in_process.version_id)).dump_state()
    before = on_ray.pools.get("prompted").status().completed
    result = on_ray.optimize_with(
        "qa", optimizer, dataset="qa-set", options=OPTIONS[optimizer], seed=3, pool="prompted"
    )
    got = on_ray.programs.build(on_ray.programs.resolve("qa", result.version_id)).dump_state()
    assert (result.score, result.candidates, result.evaluations) == (
        in_process.score,
        in_process.candidates,
        in_process.evaluations,
    )
    assert got == expected
    assert in_process.candidates > 1  # the candidates scored apart
    assert on_ray.pools.get("prompted").status().completed > before  # evaluated on the actors
