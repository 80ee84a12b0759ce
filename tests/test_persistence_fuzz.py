"""Fuzzed saves: manifests, file names, tensors, documents, payloads and raw bytes crafted
from a valid save, usually with every checksum fixed. Each load either returns exactly what
the files hold (and recall runs on it) or raises `EncodedContextError`, and never opens a
path outside the directory."""

from __future__ import annotations

import collections
import copy
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from ilre_engine import EncodedContext, EncodedContextError, persistence
from tests.crafting import (
    TEXTS_A,
    documents_context,
    engine_for,
    exercise,
    read_manifest,
    read_tensors,
    recording_opens,
    refresh_files,
    replace_documents,
    replace_tensors,
    write_manifest,
)
from tests.manifest_edits import edited as structurally_edited

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
"""(category, outcome) over every example: what `-s` prints at the end of the module."""


@pytest.fixture(scope="module")
def tiny():
    return engine_for("gemma3")


@pytest.fixture(scope="module")
def base(tiny, tmp_path_factory):
    """A valid save with a ``metadata`` payload, a sentinel file outside it, and a symlink
    inside it that points at the sentinel."""
    root = tmp_path_factory.mktemp("fuzz")
    saved = root / "ctx"
    encoded = tiny.encode_tokens(documents_context(TEXTS_A))
    metadata = [{"page": 1}, {"page": 2}]
    encoded.save(saved, extra={"metadata": metadata})
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret-0123456789ab.json").write_text('["secret", "x"]')
    EncodedContext.load_with_extra(saved, tiny)  # lazy imports happen here, not while recording
    yield saved
    print("\ncrafted-input probe (category, outcome): count")
    for key, count in sorted(OUTCOMES.items()):
        print(f"  {key}: {count}")


def fresh_copy(base: Path) -> Path:
    work = Path(tempfile.mkdtemp(dir=base.parent))
    copy_ = work / "ctx"
    shutil.copytree(base, copy_, symlinks=True)
    return copy_


def check_load(tiny, directory: Path, category: str) -> None:
    """The oracle: refused with `EncodedContextError`, or loaded exactly as the files say."""
    try:
        with recording_opens() as opened:
            try:
                loaded, extra = EncodedContext.load_with_extra(directory, tiny)
            except EncodedContextError:
                loaded = None
        inside = str(directory.resolve()) + "/"
        strays = [p for p in opened if not str(Path(p).resolve()).startswith(inside)]
        assert not strays, f"opened outside the directory: {strays}"
        if loaded is None:
            OUTCOMES[category, "refused"] += 1
            return
        assert_is_what_the_files_hold(tiny, directory, loaded, extra)
        exercise(tiny, loaded)
        OUTCOMES[category, "loaded as saved"] += 1
    except BaseException:
        OUTCOMES[category, "FAILED"] += 1
        raise
    finally:
        shutil.rmtree(directory.parent, ignore_errors=True)


def assert_is_what_the_files_hold(tiny, directory: Path, loaded, extra) -> None:
    manifest = read_manifest(directory)
    files = {role: directory / entry["name"] for role, entry in manifest["files"].items()}
    with safe_open(str(files["tensors"]), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    dtype = tiny.model.dtype
    assert torch.equal(loaded.keys, tensors["keys"].to(dtype))
    for name in ("input_ids", "doc_ids", "offsets", "word_ids"):
        assert np.array_equal(getattr(loaded.tokens, name), tensors[name].numpy()), name
    assert loaded.tokens.doc_ids.dtype == np.int32 and loaded.tokens.input_ids.dtype == np.int64
    assert list(loaded.documents) == json.loads(files["documents"].read_text("utf-8"))
    assert (loaded.sink, loaded.window, loaded.layer) == (
        manifest["sink"],
        manifest["window"],
        manifest["layer"],
    )
    assert {str(k) for k in loaded.kept} == set(manifest["kept"])
    for layer, kv in loaded.kept.items():
        info = manifest["kept"][str(layer)]
        assert (kv.sink_size, kv.keep) == (info["sink_size"], info["keep"])
        for part in ("sink_keys", "sink_values", "recent_keys", "recent_values"):
            assert torch.equal(getattr(kv, part)[0], tensors[f"kept.{layer}.{part}"].to(dtype))
    expected_extra = {
        role: json.loads(path.read_text("utf-8"))
        for role, path in files.items()
        if role not in ("tensors", "documents")
    }
    assert extra == expected_extra


# -- strategies -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 4, 8, 24, 69, 70, 71, -5, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=16),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def manifest_paths(value, prefix=()):
    """Every key path in a JSON value."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += manifest_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += manifest_paths(child, (*prefix, index))
    return paths


def edited(manifest, path, value, delete):
    manifest = copy.deepcopy(manifest)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return manifest


@FUZZ
@given(data=st.data(), delete=st.booleans(), seal=st.booleans(), value=json_values)
def test_fuzzed_manifest_values(tiny, base, data, delete, seal, value):
    directory = fresh_copy(base)
    manifest = read_manifest(directory)
    path = data.draw(st.sampled_from(manifest_paths(manifest)))
    write_manifest(directory, edited(manifest, path, value, delete), seal=seal)
    check_load(tiny, directory, "manifest value")


def near(value):
    """Values close to a valid one: what a careless edit or a crafted manifest would hold."""
    if isinstance(value, bool) or value is None:
        return st.sampled_from([None, True, False, 0, 1])
    if isinstance(value, int):
        return st.sampled_from([value - 1, value + 1, -value, 2 * value, 0, -1, float(value)])
    if isinstance(value, str):
        return st.sampled_from([value[:-1], value + "0", value.upper(), "", "none"])
    if isinstance(value, list):
        return st.sampled_from([value[:-1], [*value, 1], value[::-1], []])
    return st.sampled_from([{}, [], None])


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_near_values(tiny, base, data):
    directory = fresh_copy(base)
    manifest = read_manifest(directory)
    path = data.draw(st.sampled_from(manifest_paths(manifest)))
    original = _at(manifest, path)
    value = data.draw(near(original))
    write_manifest(directory, edited(manifest, path, value, False))
    check_load(tiny, directory, "manifest near value")


def _at(value, path):
    for key in path:
        value = value[key]
    return value


NAMES = [
    "../outside/secret-0123456789ab.json",
    "{outside}/secret-0123456789ab.json",
    "../ctx/{own}",
    "./{own}",
    "sub/../{own}",
    "{own}/",
    "{link}",
    "tensors-0123456789ab.safetensors",
    "documents-0123456789ab.json",
    "metadata-0123456789ab.json",
    "manifest.json",
    "",
    ".",
    "..",
    "/",
    "/etc/passwd",
    "{own}\x00",
    "TENSORS-0123456789AB.safetensors",
    "x" * 5000,
]


@FUZZ
@given(
    role=st.sampled_from(["tensors", "documents", "metadata"]),
    template=st.sampled_from(NAMES),
    matching_checksum=st.booleans(),
)
def test_fuzzed_file_names(tiny, base, role, template, matching_checksum):
    directory = fresh_copy(base)
    secret = directory.parent.parent / "outside" / "secret-0123456789ab.json"
    manifest = read_manifest(directory)
    link = f"{role}-0123456789ab.{'safetensors' if role == 'tensors' else 'json'}"
    (directory / link).symlink_to(secret)  # a valid-looking name that leads outside
    own = manifest["files"][role]["name"]
    name = template.format(outside=secret.parent, own=own, link=link)
    entry = manifest["files"][role]
    if matching_checksum:
        entry["sha256"] = persistence.file_sha256(secret)
        entry["size"] = secret.stat().st_size
    entry["name"] = name
    write_manifest(directory, manifest)
    check_load(tiny, directory, "file name")


DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int32,
    torch.int64,
    torch.int16,
    torch.uint8,
    torch.bool,
]
SPECIAL = [-(2**40), -(2**32), -2, -1, 0, 1, 2, 5, 22, 23, 44, 45, 69, 70, 71, 256, 2**31, 2**32]


def random_tensor(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=shape) * 10
    if not dtype.is_floating_point:
        values = np.clip(np.round(values), -128, 127) if dtype != torch.bool else values > 0
    return torch.from_numpy(np.asarray(values)).to(dtype)


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_structure(tiny, base, data):
    """One edit anywhere in the manifest (a value of another type or range, a key removed or
    added, a list element duplicated, dropped or swapped), its digest fixed."""
    directory = fresh_copy(base)
    write_manifest(directory, data.draw(structurally_edited(read_manifest(directory))))
    check_load(tiny, directory, "manifest structure")


@st.composite
def tensor_edits(draw, tensors):
    """A new set of tensors: one replaced, poked, reshaped, retyped, dropped or added."""
    tensors = dict(tensors)
    name = draw(st.sampled_from([*tensors, "extra"]))
    action = draw(st.sampled_from(["poke", "poke", "poke", "retype", "reshape", "drop", "new"]))
    original = tensors.get(name, torch.zeros(3))
    if action == "poke" and original.numel():
        flat = original.clone().reshape(-1)
        index = draw(st.integers(0, flat.numel() - 1))
        value = draw(st.sampled_from(SPECIAL) | st.integers(-100, 100))
        if original.dtype.is_floating_point:
            value = float(value)
        elif not torch.iinfo(original.dtype).min <= value <= torch.iinfo(original.dtype).max:
            flat = flat.long()  # a value the saved dtype cannot hold: widen it
        flat[index] = value
        tensors[name] = flat.reshape(original.shape)
    elif action == "retype":
        tensors[name] = original.to(draw(st.sampled_from(DTYPES)))
    elif action == "reshape":
        shape = list(original.shape) or [1]
        axis = draw(st.integers(0, len(shape) - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1, 2])))
        tensors[name] = random_tensor(draw(st.integers(0, 99)), tuple(shape), original.dtype)
    elif action == "drop":
        tensors.pop(name, None)
    else:
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 80), min_size=0, max_size=3)))
        tensors[name] = random_tensor(draw(st.integers(0, 99)), shape, dtype)
    return tensors


@FUZZ
@given(data=st.data(), shapes=st.booleans())
def test_fuzzed_tensors_with_matching_checksums(tiny, base, data, shapes):
    directory = fresh_copy(base)
    tensors = data.draw(tensor_edits(read_tensors(directory)))
    replace_tensors(directory, tensors, shapes=shapes)
    check_load(tiny, directory, "tensors")


@st.composite
def document_edits(draw, documents):
    action = draw(st.sampled_from(["shorten", "lengthen", "drop", "add", "any"]))
    documents = list(documents)
    index = draw(st.integers(0, len(documents) - 1))
    if action == "shorten":
        documents[index] = documents[index][: draw(st.integers(0, len(documents[index])))]
    elif action == "lengthen":
        documents[index] += draw(st.text(min_size=1, max_size=10))
    elif action == "drop":
        documents.pop(index)
    elif action == "add":
        documents.append(draw(st.text(max_size=10)))
    else:
        return draw(json_values)
    return documents


@FUZZ
@given(data=st.data())
def test_fuzzed_documents_with_matching_checksums(tiny, base, data):
    directory = fresh_copy(base)
    documents = data.draw(document_edits(TEXTS_A))
    replace_documents(directory, documents)
    check_load(tiny, directory, "documents")


@FUZZ
@given(value=json_values)
def test_fuzzed_payloads_with_matching_checksums(tiny, base, value):
    directory = fresh_copy(base)
    manifest = read_manifest(directory)
    (directory / manifest["files"]["metadata"]["name"]).write_text(json.dumps(value))
    write_manifest(directory, refresh_files(directory, manifest))
    check_load(tiny, directory, "payload")


@FUZZ
@given(
    data=st.data(),
    action=st.sampled_from(["flip", "truncate", "append"]),
    refresh=st.booleans(),
)
def test_fuzzed_bytes(tiny, base, data, action, refresh):
    directory = fresh_copy(base)
    manifest = read_manifest(directory)
    names = ["manifest.json", *(entry["name"] for entry in manifest["files"].values())]
    path = directory / data.draw(st.sampled_from(names))
    content = bytearray(path.read_bytes())
    position = data.draw(st.integers(0, len(content) - 1))
    if action == "flip":
        content[position] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del content[position:]
    else:
        content += data.draw(st.binary(min_size=1, max_size=64))
    path.write_bytes(bytes(content))
    if refresh and path.name != "manifest.json":
        write_manifest(directory, refresh_files(directory, manifest))
    check_load(tiny, directory, "bytes")
