"""Warm start: what a fresh process pays for its first result, for one or more source trees
side by side (issue 29, item 4).

    git worktree add /tmp/wt-before 554d22b
    python benchmarks/cold_start.py --repeats 3 --tree before=/tmp/wt-before --tree after=.

Two cases, each run `--repeats` times per tree, the trees taking turns (so a change in the
machine's load falls on both), each run a fresh process with the model cache warm:

- **README command**: ``ilre compress --query ... --budget 80 ilre_engine/data/sample.txt``
  (the console script beside this interpreter), timed end to end from process start to exit;
  its standard output is kept, and must be byte-identical across trees. A second process
  repeats the command's steps with a clock between them: the imports it makes before it
  reads its input, the model load (`ILRe.from_pretrained`), the encode, and the recall (which
  loads the prior's sentence model on first use).
- **first LangChain compression**: a fresh process that imports ``langchain_ilre``, builds
  ``ILReCompressor(budget_tokens=80)`` with defaults and calls ``compress_documents`` on the
  sample as one `Document`, timed end to end; inside, the imports, the engine load (the
  shared engine the compressor then uses) and the call.

A tree runs with ``PYTHONPATH`` set to its root and its LangChain partner package, and the
files each tree's processes import are recorded (``imported``). As the README's reader (and
CI's first command) runs it, no hub is switched off: ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are removed from the processes' environment. With ``--first-run`` each
tree also runs once on an empty model cache (the GGUF conversion included) and once
without compiled bytecode, as after ``pip install``.
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

from output_folder import dated_folder

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "ilre_engine" / "data" / "sample.txt"
QUERY = "How much longer must the lifeboat wait at low tide?"
BUDGET = 80
COMMAND = ["compress", "--query", QUERY, "--budget", str(BUDGET), str(SAMPLE)]
PARTNER = Path("ilre_integrations", "distributions", "langchain-ilre")
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

README_STEPS = f"""
import json, sys, time
started = time.perf_counter()
import ilre_engine.cli
from ilre_engine.engine import ILRe
imported = time.perf_counter()
engine = ILRe.from_pretrained()
loaded = time.perf_counter()
encoded = engine.encode(open({str(SAMPLE)!r}).read())
encoded_at = time.perf_counter()
engine.recall(encoded, {QUERY!r}, budget_tokens={BUDGET})
done = time.perf_counter()
json.dump({{"import": imported - started, "load": loaded - imported,
           "encode": encoded_at - loaded, "recall": done - encoded_at}}, sys.stdout)
"""

LANGCHAIN = f"""
import json, sys, time
started = time.perf_counter()
from langchain_core.documents import Document
from langchain_ilre import ILReCompressor
from ilre_integrations._common import shared_engine
imported = time.perf_counter()
shared_engine()  # what the compressor's first call loads, and then uses
loaded = time.perf_counter()
kept = ILReCompressor(budget_tokens={BUDGET}).compress_documents(
    [Document(page_content=open({str(SAMPLE)!r}).read())], {QUERY!r}
)
done = time.perf_counter()
assert kept, "nothing kept"
json.dump({{"import": imported - started, "load": loaded - imported, "call": done - loaded,
           "text": [d.page_content for d in kept]}}, sys.stdout)
"""

IMPORTED = """
import json, ilre_engine, ilre_engine.engine, ilre_engine.loading, ilre_engine.hybrid
import ilre_integrations, langchain_ilre
print(json.dumps({m.__name__: m.__file__ for m in (ilre_engine, ilre_engine.engine,
    ilre_engine.loading, ilre_engine.hybrid, ilre_integrations, langchain_ilre)}))
"""


def ilre_script() -> str:
    """The console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("ilre")
    if not script.exists():
        raise SystemExit(f"no `ilre` beside {sys.executable}: pip install the package first")
    return str(script)


def reader_env() -> dict[str, str]:
    """This process's environment without the hub switches, as a README reader has it."""
    return {name: value for name, value in os.environ.items() if name not in OFFLINE}


def run_in(root: Path, command: list[str], **env: str) -> str:
    """Standard output of `command` run in the tree at `root`: from that directory (which
    ``python -c`` puts first on its path), with ``PYTHONPATH`` naming the tree and its
    LangChain package (ahead of the editable installs' finders), plus `env`."""
    path = os.pathsep.join([str(root), str(root / PARTNER)])
    run = subprocess.run(
        command,
        cwd=root,
        env={**reader_env(), "PYTHONPATH": path, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return run.stdout


def python(code: str, root: Path, **env: str) -> dict:
    """The JSON that `code` prints last, run in a fresh interpreter in the tree at `root`."""
    return json.loads(run_in(root, [sys.executable, "-c", code], **env).splitlines()[-1])


def readme_run(root: Path) -> tuple[dict[str, float], str]:
    """End-to-end seconds of the README command and its output; then its steps' seconds."""
    started = time.perf_counter()
    printed = run_in(root, [ilre_script(), *COMMAND])
    end_to_end = time.perf_counter() - started
    return {"end_to_end": end_to_end, **python(README_STEPS, root)}, printed


def langchain_run(root: Path) -> tuple[dict[str, float], list[str]]:
    """End-to-end seconds of a first LangChain compression, its steps, and its output."""
    started = time.perf_counter()
    steps = python(LANGCHAIN, root)
    steps["end_to_end"] = time.perf_counter() - started
    return steps, steps.pop("text")


def machine() -> str:
    """The results folder's machine: ``cpu-avx512`` where the CPU multiplies bfloat16 natively
    (the engine then runs in bfloat16), else ``cpu``."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu"
    return "cpu-avx512" if "avx512_bf16" in flags else "cpu"


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def first_run(root: Path, scratch: Path) -> dict[str, dict[str, float]]:
    """The README command's steps on an empty model cache (the conversion included), then
    without compiled bytecode; each followed by the next end-to-end run."""
    cases = {}
    for case, variable in (
        ("first_run", "ILRE_CACHE_DIR"),
        ("fresh_install", "PYTHONPYCACHEPREFIX"),
    ):
        folder = scratch / case
        steps = python(README_STEPS, root, **{variable: str(folder)})
        started = time.perf_counter()
        run_in(root, [ilre_script(), *COMMAND], **{variable: str(folder)})
        cases[case] = {**steps, "next_end_to_end": time.perf_counter() - started}
        shutil.rmtree(folder, ignore_errors=True)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tree",
        action="append",
        metavar="NAME=PATH",
        help="a source tree to measure (repeatable; default: this one, as 'this')",
    )
    parser.add_argument("--first-run", action="store_true", help="also the first-run cases")
    parser.add_argument("--out", type=Path, default=None, help="default: the dated folder")
    args = parser.parse_args()
    trees = dict(tree.split("=", 1) for tree in args.tree or [f"this={ROOT}"])
    trees = {name: Path(path).resolve() for name, path in trees.items()}
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["ilre", *COMMAND[:-1], str(SAMPLE.relative_to(ROOT))]),
        "trees": {name: str(root) for name, root in trees.items()},
        "imported": {name: python(IMPORTED, root) for name, root in trees.items()},
    }
    readme: dict[str, list] = {name: [] for name in trees}
    langchain: dict[str, list] = {name: [] for name in trees}
    outputs: dict[str, set[str]] = {name: set() for name in trees}
    kept: dict[str, set[str]] = {name: set() for name in trees}
    for _ in range(args.repeats):
        for name, root in trees.items():
            steps, printed = readme_run(root)
            readme[name].append(steps)
            outputs[name].add(printed)
            steps, texts = langchain_run(root)
            langchain[name].append(steps)
            kept[name].add(json.dumps(texts))
    results["readme_warm"] = {
        name: {"median": medians(runs), "runs": runs} for name, runs in readme.items()
    }
    results["langchain_first"] = {
        name: {"median": medians(runs), "runs": runs} for name, runs in langchain.items()
    }
    every_output = set().union(*outputs.values())
    results["same_readme_output"] = len(every_output) == 1
    results["readme_output"] = sorted(every_output)
    results["same_langchain_output"] = len(set().union(*kept.values())) == 1
    if args.first_run:
        with tempfile.TemporaryDirectory() as scratch:
            results["first_run"] = {
                name: first_run(root, Path(scratch)) for name, root in trees.items()
            }
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for case in ("readme_warm", "langchain_first"):
        for name, row in results[case].items():
            print(
                f"{case} {name:>8}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in row["median"].items())
            )
    print("same README output:", results["same_readme_output"])
    print("same LangChain output:", results["same_langchain_output"])
    out = args.out or dated_folder(machine()) / "cold_start.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
