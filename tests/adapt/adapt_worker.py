"""A second process serving an adaptive program: ``python adapt_worker.py DATABASE_URL NAME RUNS``.

Prints one JSON line: the arms it served, and what its policy state counts after a final catch-up."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from adapt_support import is_four, lms

from dspex.runtime.app import App
from dspex.settings import Settings


def main() -> None:
    url, name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with App(Settings(database_url=url)) as app:
        adaptive = app.adapt.get(name, metric=is_four, lms=lms())
        served: dict[str, int] = {}
        for _ in range(runs):
            _, decision = adaptive.serve({"question": "2 + 2?"})
            served[decision.arm] = served.get(decision.arm, 0) + 1
        adaptive.sync()
        seen = {arm: adaptive.state.view(arm).served for arm in adaptive.arms}
        print(json.dumps({"served": served, "seen": seen}))


if __name__ == "__main__":
    main()
