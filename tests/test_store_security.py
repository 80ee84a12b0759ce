"""A corpus store trusts nothing in its directory, as a saved context does (issue 27): no path
is followed out of it, ``store.json`` is read capped from a regular file and checked field by
field, keys must be finite, and every caller mistake is an `ILReError` naming the argument."""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilre_engine import EncodedContext, EncodedContextError, ILReError
from ilre_engine.errors import DirectoryError, UnknownDocumentError
from ilre_engine.store import MANIFEST, CorpusStore, write_shard
from tests.crafting import (
    TEXTS_A,
    canonical_digest,
    documents_context,
    engine_for,
    read_tensors,
    recording_opens,
    replace_tensors,
)
from tests.manifest_edits import edited
from tests.test_store import DOCUMENTS, QUESTION, _tiny

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
OUTCOMES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return _tiny(tokenizer)


@pytest.fixture(scope="module")
def base(tiny, tmp_path_factory):
    """A valid store of two shards (5 documents), and beside it an outside place a hostile
    store points at: a store of its own, with a secret."""
    root = tmp_path_factory.mktemp("stores")
    store = CorpusStore.create(root / "store", tiny)
    store.add(DOCUMENTS[:3], [{"n": i} for i in range(3)])
    store.add(DOCUMENTS[3:5])
    outside = CorpusStore.create(root / "outside", tiny)
    outside.add(["A secret that must never be served."])
    os.symlink(root / "outside" / shard_names(outside.directory)[0], store.directory / LINKED)
    yield store.directory
    print(f"\nstore.json edits: {dict(OUTCOMES)}")


LINKED = "shard-00000000000e"
"""A symlink in the base store to the outside store's shard, for edits to name."""


def shard_names(directory: Path) -> list[str]:
    return [entry["name"] for entry in read(directory)["shards"]]


def read(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def seal(directory: Path, manifest) -> None:
    """Write `manifest` with its digest recomputed: only the schema stands in the way."""
    if isinstance(manifest, dict):
        manifest = {**manifest, "manifest_sha256": canonical_digest(manifest)}
    (directory / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def copy(base, tmp_path):
    """A fresh copy of the base store; its outside place is the base's."""
    target = tmp_path / "store"
    shutil.copytree(base, target, symlinks=True)
    return target


def outside_of(base: Path) -> Path:
    return base.parent / "outside"


# -- 1. nothing is read outside the store -----------------------------------------------------


def test_a_shard_symlinked_out_of_the_store_is_refused(tiny, copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = shard_names(copy)[0]
    shutil.move(copy / name, elsewhere / name)
    (copy / name).symlink_to(elsewhere / name)
    with recording_opens() as opened, pytest.raises(EncodedContextError, match="symlink"):
        CorpusStore.open(copy, tiny)
    assert not [p for p in opened if p.startswith(str(elsewhere))]


def test_a_symlinked_store_json_outside_is_refused(tiny, copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(copy / MANIFEST, elsewhere / MANIFEST)
    (copy / MANIFEST).symlink_to(elsewhere / MANIFEST)
    with recording_opens() as opened, pytest.raises(EncodedContextError, match="outside"):
        CorpusStore.open(copy, tiny)
    assert not [p for p in opened if p.startswith(str(elsewhere))]


def test_a_copy_takes_only_the_stores_own_files(tiny, copy, base, tmp_path):
    store = CorpusStore.open(copy, tiny)
    (copy / shard_names(copy)[0] / "leak.json").symlink_to(outside_of(base) / MANIFEST)
    copied = store.copy_to(tmp_path / "copied")
    assert len(copied) == 5 and copied.document(3) == store.document(3)
    files = [p for p in (tmp_path / "copied").rglob("*")]
    assert not [p for p in files if p.is_symlink()] and LINKED not in {p.name for p in files}
    (copy / shard_names(copy)[1]).rename(copy / "moved")
    (copy / shard_names(copy)[1]).symlink_to(outside_of(base) / shard_names(outside_of(base))[0])
    with pytest.raises(EncodedContextError, match="symlink"):
        store.copy_to(tmp_path / "again")


# -- 2. store.json is a capped, regular file --------------------------------------------------


def test_a_fifo_store_json_is_refused_without_blocking(tiny, copy):
    (copy / MANIFEST).unlink()
    os.mkfifo(copy / MANIFEST)

    def unblock():  # what ends the wait of a reader that opened the FIFO
        time.sleep(3)
        try:
            descriptor = os.open(copy / MANIFEST, os.O_WRONLY | os.O_NONBLOCK)
            os.close(descriptor)
        except OSError:
            pass

    threading.Thread(target=unblock, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(EncodedContextError, match="not a regular file"):
        CorpusStore.open(copy, tiny)
    assert time.monotonic() - started < 2


def test_an_oversized_store_json_is_refused_unread(tiny, copy):
    with (copy / MANIFEST).open("r+b") as handle:
        handle.truncate(65 << 20)  # sparse: nothing to read but its size
    with pytest.raises(EncodedContextError, match="over"):
        CorpusStore.open(copy, tiny)


def test_a_store_json_linked_to_dev_zero_is_refused(tiny, copy):
    (copy / MANIFEST).unlink()
    (copy / MANIFEST).symlink_to("/dev/zero")
    with pytest.raises(EncodedContextError, match="outside"):
        CorpusStore.open(copy, tiny)


# -- 3. every field of store.json is checked --------------------------------------------------


def _listed_twice(manifest: dict) -> None:
    manifest["shards"].insert(1, dict(manifest["shards"][0]))


EDITS = {
    "shard listed twice": _listed_twice,
    "negative first_document": lambda m: m["shards"][0].update(first_document=-1),
    "overlapping shards": lambda m: m["shards"][1].update(first_document=1),
    "string tokens": lambda m: m["shards"][0].update(tokens=str(m["shards"][0]["tokens"])),
    "extra shard key": lambda m: m["shards"][0].update(extra=1),
    "missing shard key": lambda m: m["shards"][0].pop("tokens"),
    "shards a number": lambda m: m.update(shards=5),
    "deleted a string": lambda m: m.update(deleted="1"),
    "deleted out of range": lambda m: m.update(deleted=[99]),
    "deleted negative": lambda m: m.update(deleted=[-1]),
    "deleted twice": lambda m: m.update(deleted=[1, 1]),
    "deleted a bool": lambda m: m.update(deleted=[True]),
    "huge next_document": lambda m: m.update(next_document=10**15),
    "negative next_document": lambda m: m.update(next_document=-1),
    "next_document past the shards": lambda m: m.update(next_document=6),
    "extra key": lambda m: m.update(comment="hi"),
    "missing key": lambda m: m.pop("deleted"),
    "layer a string": lambda m: m.update(layer="1"),
    "shard named outside": lambda m: m["shards"][0].update(name="../outside"),
    "shard linked outside": lambda m: m["shards"][0].update(name=LINKED),
}
"""Edits of a valid manifest, each of which a store never writes."""


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_store_json_edited_with_its_digest_fixed_is_refused(tiny, copy, edit):
    manifest = read(copy)
    EDITS[edit](manifest)
    seal(copy, manifest)
    with pytest.raises(EncodedContextError, match=r"invalid|symlink|refusing"):
        store = CorpusStore.open(copy, tiny)
        [store.document(i) for i in range(len(store))]


def test_a_deeply_nested_store_json_is_refused(tiny, copy):
    manifest = read(copy)
    text = json.dumps(manifest).replace(
        '"deleted": []', '"deleted": ' + "[" * 200_000 + "]" * 200_000
    )
    (copy / MANIFEST).write_text(text)
    with pytest.raises(EncodedContextError, match="damaged"):
        CorpusStore.open(copy, tiny)


def test_a_shard_that_disagrees_with_store_json_is_refused(tiny, copy):
    manifest = read(copy)
    manifest["shards"][0]["tokens"] += 1
    seal(copy, manifest)
    store = CorpusStore.open(copy, tiny)
    with pytest.raises(EncodedContextError, match="does not match"):
        store.document(0)


# -- 4. keys must be finite -------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_shard_with_non_finite_keys_is_refused(tiny, copy, value):
    shard = copy / shard_names(copy)[0]
    tensors = read_tensors(shard)
    tensors["keys"] = tensors["keys"].clone()
    tensors["keys"][0, 3, 5] = value
    replace_tensors(shard, tensors)
    store = CorpusStore.open(copy, tiny)
    with pytest.raises(EncodedContextError, match="NaN or infinite"):
        store.document(0)
    with pytest.raises(EncodedContextError, match="NaN or infinite"):
        store.check()


@pytest.mark.parametrize("part", ["keys", "kept"])
def test_a_saved_context_with_non_finite_keys_is_refused(tmp_path, part):
    engine = engine_for("gemma3")
    engine.encode_tokens(documents_context(TEXTS_A)).save(tmp_path / "ctx")
    tensors = read_tensors(tmp_path / "ctx")
    name = next(n for n, t in sorted(tensors.items()) if n.startswith(part) and t.numel())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    replace_tensors(tmp_path / "ctx", tensors)
    with pytest.raises(EncodedContextError, match="NaN or infinite"):
        EncodedContext.load(tmp_path / "ctx", engine)


# -- 5. caller mistakes are ILReErrors naming the argument ------------------------------------


@pytest.mark.parametrize(
    ("metadata", "named"),
    [([None], "metadata"), ([1], "metadata"), ({"source": "x"}, "metadata"), ("ab", "metadata")],
)
def test_bad_metadata_is_refused_before_any_encode(tiny, copy, metadata, named):
    store = CorpusStore.open(copy, tiny)
    with pytest.raises(ILReError, match=named):
        store.add(["one document"], metadata)
    assert not list(copy.glob("pending-*"))


@pytest.mark.parametrize("ids", [None, [999], [-1], ["a"], [1.5], [True], 3, "1"])
def test_bad_document_ids_are_refused_and_delete_nothing(tiny, copy, ids):
    store = CorpusStore.open(copy, tiny)
    with pytest.raises(UnknownDocumentError, match="document") as raised:
        store.delete(ids)
    assert isinstance(raised.value, KeyError) and "\n" not in str(raised.value)
    assert len(CorpusStore.open(copy, tiny)) == 5


def test_document_of_a_non_id_is_refused(tiny, copy):
    store = CorpusStore.open(copy, tiny)
    for value in ("x", None, 1.0, True):
        with pytest.raises(UnknownDocumentError, match="document_id"):
            store.document(value)


def test_a_regular_file_is_no_directory_to_save_in(tiny, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DirectoryError, match="is a file"):
        CorpusStore.create(path, tiny)
    with pytest.raises(DirectoryError, match="is a file"):
        CorpusStore.create(path / "below", tiny)
    engine = engine_for("gemma3")
    with pytest.raises(DirectoryError, match="is a file"):
        engine.encode_tokens(documents_context(TEXTS_A)).save(path)
    with pytest.raises(DirectoryError):
        CorpusStore.create("/proc/ilre-none", tiny)


def test_an_engine_that_is_none_is_refused(copy):
    with pytest.raises(ILReError, match="engine"):
        CorpusStore.open(copy, None)


def test_a_store_whose_directory_is_gone_is_refused_in_one_line(tiny, copy):
    store = CorpusStore.open(copy, tiny)
    shutil.rmtree(copy)
    for change in (lambda: store.delete([0]), lambda: store.add(["one more"])):
        with pytest.raises(ILReError) as raised:
            change()
        assert "\n" not in str(raised.value)
    assert not copy.exists()  # nothing recreated


def test_a_symlinked_pending_shard_is_removed_not_followed(tiny, copy, base):
    target = outside_of(base) / shard_names(outside_of(base))[0]
    (copy / "pending-0123456789ab").symlink_to(target)
    store = CorpusStore.open(copy, tiny)
    with pytest.raises(EncodedContextError, match="symlink"):
        store.commit(["pending-0123456789ab"])
    assert store.discard_pending() == ["pending-0123456789ab"]
    assert target.is_dir() and not os.path.lexists(copy / "pending-0123456789ab")


def test_a_pending_shard_with_bad_names_is_refused(tiny, copy):
    store = CorpusStore.open(copy, tiny)
    for pending in ("pending-0123456789ab", ["../x"], [None]):
        with pytest.raises(ILReError, match="pending"):
            store.commit(pending)


# -- the property: a typed refusal or an equal-or-smaller valid store -------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_edit_of_store_json_is_refused_or_a_smaller_store(tiny, base, data):
    """One edit anywhere in ``store.json`` (digest fixed): `open`, every live document and
    `check` either refuse with `EncodedContextError` or serve a subset of the documents, as
    they were, and recall from them alone; nothing outside the store's directory is
    opened."""
    work = Path(tempfile.mkdtemp(dir=base.parent))
    directory = work / "store"
    shutil.copytree(base, directory, symlinks=True)
    original = {i: CorpusStore.open(base, tiny).document(i) for i in range(5)}
    seal(directory, data.draw(edited(read(directory))))
    try:
        with recording_opens() as opened:
            try:
                store = CorpusStore.open(directory, tiny)
                served = {i: store.document(i) for i in range(5) if i not in store.deleted}
                store.check()
            except EncodedContextError:
                OUTCOMES["refused"] += 1
            else:
                assert len(store) == len(served) <= 5
                assert all(original[i] == document for i, document in served.items())
                if served:
                    spans = store.recall(QUESTION, budget_tokens=20).spans
                    assert {span.document for span in spans} <= served.keys()
                OUTCOMES["a valid store"] += 1
        inside = str(directory.resolve()) + os.sep
        strays = [p for p in opened if p.startswith(str(base.parent)) and not p.startswith(inside)]
        assert not strays, f"opened outside the store: {strays}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_writers_only_write_what_they_are_given(tiny, copy):
    """`write_shard` refuses bad metadata as `add` does (it is what `encode_corpus` calls)."""
    with pytest.raises(ILReError, match="metadata"):
        write_shard(copy, tiny, ["a", "b"], [{}, None])


# -- tamper evidence: a keyed digest, on request ----------------------------------------------


def test_a_keyed_store_tells_its_writers_copy_from_an_edited_one(tiny, tmp_path):
    key = b"a secret the writer keeps"
    store = CorpusStore.create(tmp_path / "s", tiny, key=key)
    store.add(DOCUMENTS[:2])
    store.add(DOCUMENTS[2:3])
    assert len(CorpusStore.open(store.directory, tiny, key=key)) == 3
    assert len(CorpusStore.open(store.directory, tiny)) == 3  # readable without the key
    with pytest.raises(EncodedContextError, match="authenticated"):
        CorpusStore.open(store.directory, tiny).delete([0])  # but not changed
    with pytest.raises(EncodedContextError, match="authentication"):
        CorpusStore.open(store.directory, tiny, key=b"another key")
    with pytest.raises(ILReError, match="key"):
        CorpusStore.open(store.directory, tiny, key="a secret the writer keeps")

    edited_copy = tmp_path / "edited"
    shutil.copytree(store.directory, edited_copy)
    manifest = read(edited_copy)
    manifest["deleted"] = [1]
    seal(edited_copy, manifest)  # the unkeyed digest fixed: only the keyed one tells
    CorpusStore.open(edited_copy, tiny)
    with pytest.raises(EncodedContextError, match="authentication"):
        CorpusStore.open(edited_copy, tiny, key=key)

    shard = store.directory / shard_names(store.directory)[1]
    tensors = read_tensors(shard)
    replace_tensors(shard, {**tensors, "keys": tensors["keys"] * 2})  # its checksums fixed
    with pytest.raises(EncodedContextError, match="authentication"):
        CorpusStore.open(store.directory, tiny, key=key)


def test_an_unkeyed_store_opened_with_a_key_is_refused(tiny, copy):
    with pytest.raises(EncodedContextError, match="not authenticated"):
        CorpusStore.open(copy, tiny, key=b"k")
