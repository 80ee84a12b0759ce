"""The `ilre` wheel and the three partner wheels, as
`ilre_integrations/distributions/build_wheels.py` builds them.

The partner packages (``ilre_integrations/distributions/``) hold the LangChain and LlamaIndex
classes themselves, so serialised ids and tracebacks name them; the `ilre` wheel holds the
engine and what the faces share (``ilre_integrations``), and none of the partner packages.
Every wheel carries the LICENSE.

The slow test installs the four wheels into a fresh virtualenv with ``--no-index`` (their
dependencies from a wheelhouse made first, at the versions of this environment), imports each
partner package under its conventional path there, and runs each package's own tests there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

# The build backend, used with --no-build-isolation; 77 reads PEP 639 license strings.
pytest.importorskip("setuptools", minversion="77")

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ROOT / "ilre_integrations" / "distributions"
SCRIPT = ROOT / "ilre_integrations" / "distributions" / "build_wheels.py"

# name -> (module, its files besides py.typed, classes, the framework's core)
EXPECTED = {
    "langchain-ilre": (
        "langchain_ilre",
        ["__init__.py", "_shared.py", "document_compressors.py", "retrievers.py"],
        ["ILReCompressor", "ILReRetriever"],
        "langchain-core",
    ),
    "llama-index-postprocessor-ilre": (
        "llama_index.postprocessor.ilre",
        ["__init__.py", "base.py"],
        ["ILRePostprocessor"],
        "llama-index-core",
    ),
    "llama-index-retrievers-ilre": (
        "llama_index.retrievers.ilre",
        ["__init__.py", "base.py"],
        ["ILReRetriever"],
        "llama-index-core",
    ),
}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The four wheels, built by the script, by distribution name."""
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = {}
    for line in done.stdout.split():
        with zipfile.ZipFile(line) as wheel:
            built[_metadata(wheel)["Name"]] = Path(line)
    assert sorted(built) == sorted(["ilre", *EXPECTED]), built
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in built.values())
    return built


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


def _license(wheel: zipfile.ZipFile, metadata: Message) -> None:
    """The wheel states Apache-2.0 and carries the repository's LICENSE, byte for byte."""
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(name) == (ROOT / "LICENSE").read_bytes()


def test_every_distribution_folder_carries_the_license():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    for name in EXPECTED:
        assert (DISTRIBUTIONS / name / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_partner_wheel_holds_its_classes(name, wheels):
    module, modules, _, core = EXPECTED[name]
    with zipfile.ZipFile(wheels[name]) as wheel:
        metadata = _metadata(wheel)
        _license(wheel, metadata)
        files = {n for n in wheel.namelist() if ".dist-info/" not in n}

    # Name, version, dependencies: the engine, and the framework's core with an upper bound.
    assert metadata["Version"] == "0.1.0"
    requires = metadata.get_all("Requires-Dist") or []
    assert len(requires) == 2, requires  # ilre and the framework's core, nothing else
    ilre = _requirement(requires, "ilre")
    assert ">=0.1.0" in ilre and "<0.2.0" in ilre, ilre
    bounds = _requirement(requires, core)
    assert ">=" in bounds and "<" in bounds.replace("<=", ""), bounds

    # The package's modules and py.typed, no tests; for LlamaIndex a namespace package,
    # with no __init__.py above the integration's folder.
    package = module.replace(".", "/")
    assert files == {f"{package}/{f}" for f in [*modules, "py.typed"]}, sorted(files)


def test_the_ilre_wheel_holds_the_engine_and_what_the_faces_share(wheels):
    with zipfile.ZipFile(wheels["ilre"]) as wheel:
        _license(wheel, _metadata(wheel))
        names = wheel.namelist()
    assert "ilre_integrations/_common.py" in names
    assert "ilre_integrations/_llama_index.py" in names
    assert not [n for n in names if n.startswith("ilre_integrations/distributions")]
    assert not [n for n in names if n.split("/")[0] in {"langchain_ilre", "llama_index"}]
    # The faces are the partner packages' alone: one implementation.
    assert "ilre_integrations/langchain.py" not in names
    assert "ilre_integrations/llama_index.py" not in names


def test_llamahub_metadata_and_the_namespace_package():
    import tomllib

    for name, (module, _, classes, _) in EXPECTED.items():
        config = tomllib.loads((DISTRIBUTIONS / name / "pyproject.toml").read_text())
        assert config["project"]["license-files"] == ["LICENSE"]
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


# What the partner packages' own tests need besides the packages themselves.
TEST_REQUIREMENTS = ("pytest", "pytest-asyncio", "langchain-tests")


def _constraints(path: Path) -> Path:
    """This environment's versions, as pip constraints (the project's own distributions and
    editable installs left out), so the fresh environment matches the tested one."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ours = ("ilre==", *(f"{name}==" for name in EXPECTED))
    lines = [
        line
        for line in frozen
        if "==" in line and not line.lower().startswith(ours) and " @ " not in line
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_the_wheels_install_alone_and_pass_their_own_tests(wheels, tmp_path):
    dist = next(iter(wheels.values())).parent
    names = ["ilre", *EXPECTED]
    # The dependencies' wheels first (from the wheels on this machine and pip's cache, at
    # this environment's versions); then an install that reads no index at all.
    wheelhouse = tmp_path / "wheelhouse"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    done = subprocess.run(
        [
            *pip,
            *("wheel", "-q", "-w", str(wheelhouse)),
            *("-c", str(_constraints(tmp_path / "constraints.txt"))),
            *map(str, wheels.values()),  # the files themselves: no index's project of that name
            *TEST_REQUIREMENTS,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    done = subprocess.run(
        [
            *(str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"),
            *("--no-index", "--find-links", str(dist), "--find-links", str(wheelhouse)),
            *names,
            *TEST_REQUIREMENTS,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Each package imports under its conventional path, from the fresh environment.
    probe = (
        "import importlib, json; "
        f"print(json.dumps({{m: importlib.import_module(m).__file__ for m in {_modules()!r}}}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    for module, file in json.loads(done.stdout).items():
        assert Path(file).is_relative_to(environment), (module, file)

    # Each package's own tests, from a copy of its tests and pytest settings (not of its
    # code, which comes from the installed wheel).
    for name in EXPECTED:
        copy = tmp_path / "tests-of" / name
        shutil.copytree(DISTRIBUTIONS / name / "tests", copy / "tests")
        shutil.copy2(DISTRIBUTIONS / name / "pyproject.toml", copy / "pyproject.toml")
        done = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            capture_output=True,
            text=True,
            cwd=copy,
            env=env,
            timeout=1200,
        )
        assert done.returncode == 0, f"{name}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
        assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-2000:]


def _modules() -> list[str]:
    return [module for module, _, _, _ in EXPECTED.values()]
