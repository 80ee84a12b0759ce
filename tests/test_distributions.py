"""The partner packages under ilre_integrations/distributions/ build as wheels that follow
their ecosystem's conventions and re-export the very classes of `ilre_integrations`.

Each distribution is copied to a temporary folder (so no stale build/ or *.egg-info of the
checkout can hide a missing file), built with ``pip wheel --no-deps --no-build-isolation``
(no network), unpacked, and imported from the unpacked wheel in a subprocess; nothing is
installed. The `ilre` wheel is built the same way and must not ship the distributions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

# The build backend, used with --no-build-isolation; 77 reads PEP 639 license strings.
pytest.importorskip("setuptools", minversion="77")

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ROOT / "ilre_integrations" / "distributions"

# name -> (module, classes, the ilre_integrations face they re-export, the framework's core)
EXPECTED = {
    "langchain-ilre": (
        "langchain_ilre",
        ["ILReCompressor", "ILReRetriever"],
        "ilre_integrations.langchain",
        "langchain-core",
    ),
    "llama-index-postprocessor-ilre": (
        "llama_index.postprocessor.ilre",
        ["ILRePostprocessor"],
        "ilre_integrations.llama_index",
        "llama-index-core",
    ),
    "llama-index-retrievers-ilre": (
        "llama_index.retrievers.ilre",
        ["ILReRetriever"],
        "ilre_integrations.llama_index",
        "llama-index-core",
    ),
}

_BUILD_LEFTOVERS = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")


def _build_wheel(source: Path, tmp: Path) -> Path:
    """Copy `source` into `tmp` and build its wheel there; returns the wheel."""
    copy = tmp / "src"
    if source == ROOT:
        copy.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, copy / name)
        for name in ("ilre_engine", "ilre_integrations"):
            shutil.copytree(ROOT / name, copy / name, ignore=_BUILD_LEFTOVERS)
    else:
        shutil.copytree(source, copy, ignore=_BUILD_LEFTOVERS)
    out = tmp / "wheels"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--disable-pip-version-check", "-w", str(out), str(copy)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def _metadata(wheel: zipfile.ZipFile) -> Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def _requirement(requires: list[str], project: str) -> str:
    """The one Requires-Dist line naming `project`, without markers."""
    from packaging.requirements import Requirement

    found = [Requirement(line) for line in requires if Requirement(line).name == project]
    assert len(found) == 1, (project, requires)
    assert found[0].marker is None, found[0]
    return str(found[0].specifier)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_distribution_builds_a_thin_wheel_of_the_same_classes(name, tmp_path):
    module, classes, face, core = EXPECTED[name]
    wheel_path = _build_wheel(DISTRIBUTIONS / name, tmp_path)

    with zipfile.ZipFile(wheel_path) as wheel:
        metadata = _metadata(wheel)
        files = set(wheel.namelist()) - {n for n in wheel.namelist() if ".dist-info/" in n}
        wheel.extractall(tmp_path / "unpacked")

    # Name, version, dependencies: the engine, and the framework's core with an upper bound.
    assert metadata["Name"] == name
    assert metadata["Version"] == "0.1.0"
    requires = metadata.get_all("Requires-Dist") or []
    assert len(requires) == 2, requires  # ilre and the framework's core, nothing else
    ilre = _requirement(requires, "ilre")
    assert ">=0.1.0" in ilre, ilre
    bounds = _requirement(requires, core)
    assert ">=" in bounds and "<" in bounds.replace("<=", ""), bounds

    # The module files and py.typed, and nothing else: a re-export, no logic, no tests; for
    # LlamaIndex a namespace package, with no __init__.py above the integration's folder.
    package = module.replace(".", "/")
    assert files == {f"{package}/__init__.py", f"{package}/py.typed"}, sorted(files)

    # Imported from the unpacked wheel (ilre_integrations from the checkout), the module's
    # classes are the very objects of ilre_integrations.
    probe = textwrap.dedent(
        f"""
        import importlib, json, sys
        sys.path.insert(0, {str(tmp_path / "unpacked")!r})
        module = importlib.import_module({module!r})
        face = importlib.import_module({face!r})
        print(json.dumps({{
            "file": module.__file__,
            "all": sorted(module.__all__),
            "same": {{name: getattr(module, name) is getattr(face, name) for name in {classes!r}}},
        }}))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(tmp_path / "unpacked"), seen["file"]
    assert seen["all"] == sorted(classes)
    assert seen["same"] == dict.fromkeys(classes, True)


def test_llamahub_metadata_and_the_namespace_package():
    import tomllib

    for name, (module, classes, _, _) in EXPECTED.items():
        config = tomllib.loads((DISTRIBUTIONS / name / "pyproject.toml").read_text())
        if name.startswith("llama-index-"):
            hub = config["tool"]["llamahub"]
            assert hub["contains_example"] is False
            assert hub["import_path"] == module
            assert sorted(hub["class_authors"]) == sorted(classes)
            # A namespace package: llama_index/ and llama_index/<kind>/ have no __init__.py.
            top, kind, _ = module.split(".")
            source = DISTRIBUTIONS / name
            assert (source / top / kind / "ilre" / "__init__.py").is_file()
            assert not (source / top / "__init__.py").exists()
            assert not (source / top / kind / "__init__.py").exists()


def test_the_ilre_wheel_does_not_ship_the_distributions(tmp_path):
    with zipfile.ZipFile(_build_wheel(ROOT, tmp_path)) as wheel:
        names = wheel.namelist()
    assert "ilre_integrations/langchain.py" in names
    assert "ilre_integrations/llama_index.py" in names
    assert not [n for n in names if n.startswith("ilre_integrations/distributions")]
    assert not [n for n in names if n.split("/")[0] in {"langchain_ilre", "llama_index"}]
