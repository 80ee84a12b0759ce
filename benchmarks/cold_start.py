"""Cold start: what `ilre compress` on the README's sample costs before and while it works.

    python benchmarks/cold_start.py --repeats 3 --out benchmarks/results/DATE-cpu/cold_start.json

Each case runs in fresh processes, in this order:

- **first run**: an empty model cache (``ILRE_CACHE_DIR`` a new folder), so the embedded
  GGUF is converted to the cache on the way;
- **fresh install**: no compiled bytecode (``PYTHONPYCACHEPREFIX`` a new folder), as the
  first import after ``pip install`` pays for compiling torch's and transformers' sources;
- **warm**: the usual cache and bytecode, `--repeats` times (medians).

Per case, `ilre compress` itself is timed end to end (the console script, from process start
to exit), and a second process repeats its steps with a clock between them: the imports the
command makes before it reads its input, the model load (`ILRe.from_pretrained`), and the
work (`compress`). "start" is the end-to-end time less those three: the interpreter's own
start and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "ilre_engine" / "data" / "sample.txt"
QUERY = "How much longer must the lifeboat wait at low tide?"
COMMAND = ["compress", "--query", QUERY, "--budget", "80", str(SAMPLE)]

STEPS = f"""
import json, sys, time
started = time.perf_counter()
import ilre_engine.cli
from ilre_engine.engine import ILRe
imported = time.perf_counter()
engine = ILRe.from_pretrained()
loaded = time.perf_counter()
engine.compress(open({str(SAMPLE)!r}).read(), {QUERY!r}, budget_tokens=80)
done = time.perf_counter()
json.dump({{"import": imported - started, "load": loaded - imported, "work": done - loaded}},
          sys.stdout)
"""


def ilre_command() -> list[str]:
    """The console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("ilre")
    if not script.exists():
        raise SystemExit(f"no `ilre` beside {sys.executable}: pip install the package first")
    return [str(script)]


def one_case(env: dict[str, str]) -> dict[str, float]:
    """End-to-end seconds of `ilre compress`, then the steps' seconds, in fresh processes
    that share `env` (so a first run's conversion is paid by the end-to-end run)."""
    started = time.perf_counter()
    subprocess.run([*ilre_command(), *COMMAND], env=env, check=True, capture_output=True)
    end_to_end = time.perf_counter() - started
    steps_run = subprocess.run(
        [sys.executable, "-c", STEPS], env=env, check=True, capture_output=True, text=True
    )
    return {"end_to_end": end_to_end, **json.loads(steps_run.stdout)}


def steps_of_first(env: dict[str, str]) -> dict[str, float]:
    """A case whose first process pays a one-off cost: the steps' process goes first, so it
    is the one that pays, and the end-to-end run after it shows the next run."""
    steps_run = subprocess.run(
        [sys.executable, "-c", STEPS], env=env, check=True, capture_output=True, text=True
    )
    started = time.perf_counter()
    subprocess.run([*ilre_command(), *COMMAND], env=env, check=True, capture_output=True)
    return {"next_end_to_end": time.perf_counter() - started, **json.loads(steps_run.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    base = dict(os.environ)
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "command": shlex.join(["ilre", *COMMAND[:-1], str(SAMPLE.relative_to(ROOT))]),
    }
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch, "cache")
        results["first_run"] = steps_of_first({**base, "ILRE_CACHE_DIR": str(cache)})
        shutil.rmtree(cache)
        bytecode = Path(scratch, "pycache")
        results["fresh_install"] = steps_of_first({**base, "PYTHONPYCACHEPREFIX": str(bytecode)})
    warm = [one_case(base) for _ in range(args.repeats)]
    results["warm"] = {key: statistics.median(run[key] for run in warm) for key in warm[0]}
    results["warm_runs"] = warm
    for case in ("first_run", "fresh_install", "warm"):
        row = results[case]
        print(f"{case:>14}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
