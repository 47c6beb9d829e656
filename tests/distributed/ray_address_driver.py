"""A driver process for ``test_ray_address``: joins the cluster ``DSPEX_RAY_ADDRESS`` names (read by
``Settings.load`` from the environment, as a deployment reads it), runs ``qa`` three times on a Ray pool
and prints what the test checks as one JSON line. The records are in ``DSPEX_DATABASE_URL``."""

from __future__ import annotations

import json

import psutil
import ray

from dspex.pools.ray_pool import RayPool
from dspex.runtime.app import App
from dspex.settings import Settings


def main() -> None:
    pool = {"backend": "ray", "size": 1, "actor_cpus": 1, "initializer": "dist_programs:scripted"}
    settings = Settings.load(pools={"remote": pool})
    with App(settings) as app:
        app.programs.register("qa", "dist_programs:build_qa")
        results = [app.run("qa", {"question": f"q{i}"}, pool="remote") for i in range(3)]
        remote = app.pools.get("remote")
        assert isinstance(remote, RayPool)
        pid = remote.status().workers[0].pid
        report = {
            "ray_address": settings.ray_address,
            "gcs_address": ray.get_runtime_context().gcs_address,
            "actor_pid": pid,
            # while the actor lives: the processes it descends from (the head's raylet, ``ray start``)
            "actor_ancestors": [p.pid for p in psutil.Process(pid).parents()] if pid else [],
            "runs": [{"execution_id": r.execution_id, "answer": r.outputs["answer"]} for r in results],
        }
    report["joined_after_close"] = ray.is_initialized()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
