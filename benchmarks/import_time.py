"""Import cost of dspex against bare DSPy, each measured in fresh interpreters, interleaved.

Run: ``python benchmarks/import_time.py [--runs 15]``. Prints medians and the ratios to ``import dspy``:
- ``import dspex``: the package itself (its submodules load on first use);
- ``dspex core``: dspex with DSPy, the signature engine, the module catalog, LM config and the scripted
  engine loaded, which is what a program using dspex pays before its first call.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CASES = {
    "import dspy": "import dspy",
    "import dspex": "import dspex",
    "dspex core": (
        "import dspex, dspex.lm, dspex.testing.engine; "
        "import importlib.util as u; "
        "[__import__(m) for m in ('dspex.signatures', 'dspex.modules') if u.find_spec(m)]; import dspy"
    ),
}


def measure(code: str) -> float:
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for code in CASES.values():  # warm the OS file cache once
        measure(code)
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, code in CASES.items():
            samples[name].append(measure(code))
    base = statistics.median(samples["import dspy"])
    print(f"{'case':<14} {'median ms':>10} {'ratio to import dspy':>22}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<14} {median * 1000:>10.1f} {median / base:>22.2f}")


if __name__ == "__main__":
    main()
