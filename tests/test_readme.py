"""The README runs as written (issue 26): its two commands are what CI runs, environment
included, and every Python snippet runs, offline, on the small inputs it shows, after the
shell command that comes before the corpus-store snippets (``ilre index my-store docs/``)."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest

from ilre_engine.cli import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"

DOCS = {
    "lease.txt": "The lease of the harbour office was signed by Ada Byrne on 3 May.\n",
    "roof.txt": "The roof of the harbour office was repaired in June after the storms.\n",
}
"""The folder ``docs/`` the README indexes into ``my-store``."""


def code_blocks(language: str) -> list[str]:
    """The README's fenced blocks of `language`, in order."""
    pattern = rf"^```{language}\n(.*?)^```$"
    return re.findall(pattern, README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def test_the_two_commands_are_what_ci_runs():
    """The README's first two shell blocks are one command each, and after setting up its
    virtualenv `.ci/run` runs those two lines and nothing else: no variable set beside them."""
    commands = [block.strip() for block in code_blocks("bash")[:2]]
    assert all("\n" not in command for command in commands), commands
    lines = CI.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('echo "== README command'))
    run = [line for line in lines[first:] if line.strip() and not line.startswith("echo ")]
    assert run == commands


def test_the_readme_says_what_ci_runs_offline():
    """The test command switches the hubs off itself, as the README says CI runs it."""
    assert "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest" in code_blocks("bash")[1]


def test_every_python_snippet_runs(tmp_path, monkeypatch, capsys):
    snippets = code_blocks("python")
    assert len(snippets) >= 4, "the README's Python, LangChain, LlamaIndex and store snippets"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    for name, text in DOCS.items():
        (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    assert main(["index", "my-store", "docs", "--quiet"]) == 0  # the README's shell line
    results = []
    for number, snippet in enumerate(snippets, 1):
        namespace: dict = {"__name__": f"readme_snippet_{number}"}
        try:
            exec(compile(snippet, f"README.md, Python snippet {number}", "exec"), namespace)
        except Exception as error:
            first = snippet.strip().splitlines()[0]
            pytest.fail(f"README Python snippet {number} ({first}) fails: {error!r}")
        results.append(namespace)
        del namespace
        gc.collect()  # each snippet loads its engine: one at a time in memory
    printed = capsys.readouterr().out
    assert "Ada Byrne" in results[0]["result"].text
    assert str(results[-1]["report"]).startswith("added 2, updated 0, skipped 0, deleted 0")
    assert "Ada Byrne" in printed  # the LangChain chain's (fake) answer
