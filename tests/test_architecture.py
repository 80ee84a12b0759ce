"""The package's structure: which modules may import which, and the per-family rules.

docs/ARCHITECTURE.md draws the layers; this test holds the code to them.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Gemma3TextConfig, LlamaConfig

from ilre_engine.architectures import adapter_for

ROOT = Path(__file__).parents[1]
PACKAGES = ("ilre_engine", "ilre_integrations")
FORBIDDEN = {
    "ilre_engine": ("ilre_integrations", "benchmarks", "tests"),
    "ilre_integrations": ("benchmarks", "tests"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, as absolute names: at module level, in function bodies
    and under TYPE_CHECKING alike, since each is a dependency a reader has to follow.
    ``from . import x`` names ``x``, not the package it comes from."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for child in ast.walk(tree):
        if isinstance(child, ast.Import):
            found.update(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if child.module:
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in child.names)
    return found


def _all_imports(path: Path) -> set[str]:
    """Every absolute import anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module or "")
    return names


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    # A submodule's import of a package it lives in is Python loading parents first, not a
    # dependency.
    return {
        name: {
            dep
            for dep in _imports(path, name)
            if dep in modules and dep != name and not name.startswith(dep + ".")
        }
        for name, path in modules.items()
    }


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*trail[trail.index(dep) :], dep] if dep in trail else [node, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("package", PACKAGES)
def test_no_forbidden_imports(package):
    for path in (ROOT / package).rglob("*.py"):
        for name in _all_imports(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN[package], f"{path.relative_to(ROOT)} imports {name}"


def test_only_tests_and_benchmarks_import_the_testing_package():
    """`ilre_engine.testing` holds slow reference implementations: the engine and the
    integrations never import it, so a user's import never loads them."""
    testing = ROOT / "ilre_engine" / "testing"
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(testing):
                continue
            for name in _imports(path, _module_name(path)):
                assert name.split(".")[:2] != ["ilre_engine", "testing"], (
                    f"{path.relative_to(ROOT)} imports {name}"
                )


RECALL_STEPS = (
    "ilre_engine.recall.remove_prior",
    "ilre_engine.recall.pool_scores",
    "ilre_engine.recall.head_scores",
    "ilre_engine.selection.select_within_budget",
    "ilre_engine.streaming.run_chunk",
)
"""The steps of a recall that `ilre_engine.scoring` runs once for every source of keys."""


def test_one_recall_path_for_a_context_and_a_corpus_store():
    """The engine, the corpus store and the integrations recall through `scoring` alone:
    none of them runs a step of the pipeline itself (calibration, which sweeps every layer
    at once, does), and the store never imports the engine's recall."""
    graph = _graph()
    for module in ("ilre_engine.engine", "ilre_engine.store", "ilre_engine.prefilter"):
        steps = sorted(graph[module] & set(RECALL_STEPS))
        assert not steps, f"{module} runs {steps} itself instead of scoring"
    for module, deps in graph.items():
        if module.startswith("ilre_integrations"):
            assert not deps & set(RECALL_STEPS), f"{module} runs recall steps"
    assert "ilre_engine.scoring" in graph["ilre_engine.engine"]
    assert "ilre_engine.scoring" in graph["ilre_engine.store"]


def _module_attributes(path: Path, module: str) -> set[str]:
    """``module.name`` for every attribute read off a module the file imports by name
    (``from . import streaming`` then ``streaming.stream_keys``): uses `_imports` misses."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {name.rsplit(".", 1)[-1]: name for name in _imports(path, module)}
    return {
        f"{modules[node.value.id]}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
    }


ENCODE_STEPS = (
    "ilre_engine.streaming.stream_keys",
    "ilre_engine.streaming.stream_batch",
    "ilre_engine.streaming.StreamState",
    "ilre_engine.segments.plan_segments",
    "ilre_engine.memory.check_memory",
    "ilre_engine.memory.estimate_encode_bytes",
    "ilre_engine.memory.available_bytes",
)
"""The steps of an encode, which `ilre_engine.encoding` runs for the engine and the store."""


def test_one_encode_path_below_the_engine():
    """`ILRe` is a façade over `encoding`: engine.py runs no stream, segment plan or memory
    check itself, and `encoding` knows no engine class (it reads one through a protocol)."""
    path = ROOT / "ilre_engine" / "engine.py"
    used = _imports(path, "ilre_engine.engine") | _module_attributes(path, "ilre_engine.engine")
    steps = sorted(used & set(ENCODE_STEPS))
    assert not steps, f"engine.py runs {steps} itself instead of encoding"
    assert "ilre_engine.encoding.Encoder" in used
    encoding = ROOT / "ilre_engine" / "encoding.py"
    assert set(ENCODE_STEPS) - {"ilre_engine.streaming.stream_keys"} <= (
        _imports(encoding, "ilre_engine.encoding")
        | _module_attributes(encoding, "ilre_engine.encoding")
    )
    assert "ilre_engine.engine" not in _graph()["ilre_engine.encoding"]


def _private_reads_of_an_engine(source: str) -> list[str]:
    """Attributes with a leading underscore read off an engine or its encoder (``engine._x``,
    ``self.engine._x``, ``engine.encoder._x``), dunders aside."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
        if name in ("engine", "encoder"):
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_nothing_reads_a_private_member_of_the_engine():
    """The store, the distributed encode, the command line and the integrations use the
    engine (and its encoder) through public members only."""
    assert _private_reads_of_an_engine("store.engine._keys(x)\nengine.encoder._new_keys(1)")
    paths = [ROOT / "ilre_engine" / "store.py", ROOT / "ilre_engine" / "distributed.py"]
    paths += [*(ROOT / "ilre_engine" / "cli").glob("*.py")]
    paths += [*(ROOT / "ilre_integrations").rglob("*.py")]
    for path in paths:
        reads = _private_reads_of_an_engine(path.read_text(encoding="utf-8"))
        assert not reads, f"{path.relative_to(ROOT)} reads {reads}"


def _public_members(path: Path, cls: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    return [n.name for n in body if isinstance(n, ast.FunctionDef) and n.name[0] != "_"]


ENGINE_SEAMS = ("encoder", "pipeline")
"""What the engine hands the modules it serves: its encoder (`ilre_engine.encoding`) and its
recall pipeline (`ilre_engine.scoring`)."""


def test_the_engine_has_no_public_member_that_only_the_store_uses():
    """Every public method and property of `ILRe` but its two seams that the store or the
    distributed encode reads is also read by the engine's other users (the file format, the
    command line, calibration, the integrations, the cookbook) or shown in the README: the
    store's own needs (documents side by side, end-aligned plans) are the encoder's."""
    store_side = {ROOT / "ilre_engine" / "store.py", ROOT / "ilre_engine" / "distributed.py"}
    engine_itself = {ROOT / "ilre_engine" / "engine.py", ROOT / "ilre_engine" / "encoding.py"}
    users = [
        *(p for p in (ROOT / "ilre_engine").rglob("*.py") if p not in engine_itself),
        *(ROOT / "ilre_integrations").rglob("*.py"),
        *(ROOT / "cookbook").glob("*.py"),
    ]
    users = [p for p in users if not p.is_relative_to(ROOT / "ilre_engine" / "testing")]
    readers: dict[str, set[Path]] = {}
    for path in users:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                readers.setdefault(node.attr, set()).add(path)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    members = _public_members(ROOT / "ilre_engine" / "engine.py", "ILRe")
    assert set(ENGINE_SEAMS) <= set(members)
    for name in set(members) - set(ENGINE_SEAMS):
        found = readers.get(name, set())
        only_the_store = found and found <= store_side and f".{name}(" not in readme
        assert not only_the_store, f"ILRe.{name} is read only by {sorted(p.name for p in found)}"
    assert not {"document_keys", "batch_documents"} & set(members)
    # End-aligned reads are the store's alone: the encoder's, not the engine's.
    from ilre_engine import ILRe

    for method in (ILRe.encode_tokens, ILRe.plan_segments):
        assert "end_aligned" not in inspect.signature(method).parameters


def test_nothing_in_the_packages_imports_the_command_line():
    """The command line is the top of the engine: it may import any module, none imports it."""
    for name, deps in _graph().items():
        if not name.startswith("ilre_engine.cli"):
            assert not any(d.startswith("ilre_engine.cli") for d in deps), f"{name} imports cli"


def test_the_command_line_modules_load_no_torch_until_a_command_runs():
    """Help and usage errors answer without torch: every module of the cli package imports
    only the standard library and light engine modules at its top (the rest at call time)."""
    modules = sorted(_module_name(p) for p in (ROOT / "ilre_engine" / "cli").glob("*.py"))
    modules.remove("ilre_engine.cli.__main__")  # runs the command line when imported
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = {'torch', 'transformers', 'huggingface_hub', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_checks_see_a_cycle(tmp_path, monkeypatch):
    """The cycle check is not vacuous: two modules importing each other are reported, even
    when one of the imports runs only at call time."""
    package = tmp_path / "ilre_engine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from . import a\n\n\nx = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("ilre_engine",))
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def test_importing_the_package_loads_no_torch():
    code = "import sys, ilre_engine, ilre_engine.errors; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_default_layer_is_a_global_layer_at_the_papers_depth():
    # 32 global layers: the paper's depth, 3 of 32.
    assert (
        adapter_for(LlamaConfig(num_hidden_layers=32)).default_layer(
            LlamaConfig(num_hidden_layers=32)
        )
        == 3
    )
    # Gemma 3 270M's layout: sliding layers but for 5, 11 and 17. The paper's depth (2) is a
    # sliding layer, which cannot see past 512 tokens: the first global layer after it is used.
    types = ["full_attention" if i in (5, 11, 17) else "sliding_attention" for i in range(18)]
    gemma = Gemma3TextConfig(num_hidden_layers=18, layer_types=types, sliding_window=512)
    assert adapter_for(gemma).default_layer(gemma) == 5
