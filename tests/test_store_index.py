"""`CorpusStore.index`: documents indexed under a caller's id are re-indexable (issue 26): the
unchanged are skipped without an encode, the changed replaced, and with full cleanup the
documents whose id is gone are deleted; documents of a plain `add` are never touched."""

from __future__ import annotations

import json

import pytest

from ilre_engine import EncodedContextError, ILReError
from ilre_engine.store import MANIFEST, CorpusStore, IndexReport
from tests.crafting import read_manifest, refresh_files, write_manifest
from tests.test_store import DOCUMENTS, _tiny

SOURCES = {f"/notes/{i}.txt": text for i, text in enumerate(DOCUMENTS[:4])}


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return _tiny(tokenizer)


@pytest.fixture
def encodes(tiny, monkeypatch):
    """How many documents each encode reads."""
    counts: list[int] = []
    real = tiny.encoder.document_keys

    def counted(tokenized, *args, **kwargs):
        counts.append(len(tokenized))
        return real(tokenized, *args, **kwargs)

    monkeypatch.setattr(tiny.encoder, "document_keys", counted)
    return counts


def index(store, sources: dict[str, str], **kwargs) -> IndexReport:
    metadata = [{"source": source} for source in sources]
    return store.index(list(sources.values()), metadata, ids=list(sources), **kwargs)


def test_indexing_the_same_documents_again_changes_nothing(tiny, tmp_path, encodes):
    store = CorpusStore.create(tmp_path / "s", tiny)
    first = index(store, SOURCES)
    assert first == IndexReport(added=[0, 1, 2, 3], updated=[], skipped=[], deleted=[])
    assert str(first) == "added 4, updated 0, skipped 0, deleted 0 documents"
    manifest = (store.directory / MANIFEST).read_bytes()
    again = index(CorpusStore.open(store.directory, tiny), SOURCES)
    assert again == IndexReport(added=[], updated=[], skipped=[0, 1, 2, 3], deleted=[])
    assert encodes == [4]  # the second run encoded nothing
    assert (store.directory / MANIFEST).read_bytes() == manifest  # and committed nothing
    assert len(store) == 4 and store.source_ids() == {s: i for i, s in enumerate(SOURCES)}


def test_a_changed_document_is_replaced_and_the_rest_skipped(tiny, tmp_path, encodes):
    store = CorpusStore.create(tmp_path / "s", tiny)
    index(store, SOURCES)
    changed = {**SOURCES, "/notes/1.txt": "The keeper of lock 1 retired."}
    report = index(store, changed)
    assert report == IndexReport(added=[], updated=[4], skipped=[0, 2, 3], deleted=[])
    assert encodes == [4, 1] and len(store) == 4 and store.deleted == {1}
    assert store.document(4) == ("The keeper of lock 1 retired.", {"source": "/notes/1.txt"})
    assert CorpusStore.open(store.directory, tiny).source_ids()["/notes/1.txt"] == 4


def test_changed_metadata_is_a_changed_document(tiny, tmp_path):
    store = CorpusStore.create(tmp_path / "s", tiny)
    store.index(["one text"], [{"page": 1}], ids=["a"])
    report = store.index(["one text"], [{"page": 2}], ids=["a"])
    assert report.updated == [1] and store.document(1)[1] == {"page": 2}


def test_full_cleanup_deletes_gone_sources_but_never_added_documents(tiny, tmp_path):
    store = CorpusStore.create(tmp_path / "s", tiny)
    store.add(["A document added without an id."])
    index(store, SOURCES)
    kept = dict(list(SOURCES.items())[:2])
    incremental = index(store, kept)
    assert incremental.deleted == [] and len(store) == 5
    full = index(store, kept, cleanup="full")
    assert full == IndexReport(added=[], updated=[], skipped=[1, 2], deleted=[3, 4])
    assert len(store) == 3 and store.document(0)[0] == "A document added without an id."
    assert store.source_ids() == {"/notes/0.txt": 1, "/notes/1.txt": 2}


def test_bad_ids_and_cleanup_are_refused_naming_them(tiny, tmp_path, encodes):
    store = CorpusStore.create(tmp_path / "s", tiny)
    for ids, named in (
        (None, "ids"),
        ("ab", "ids"),
        (["a"], "ids"),
        (["a", "a"], "distinct"),
        (["a", 3], "ids"),
        (["a", ""], "ids"),
    ):
        with pytest.raises(ILReError, match=named):
            store.index(["one", "two"], ids=ids)
    with pytest.raises(ILReError, match="cleanup"):
        store.index(["one"], ids=["a"], cleanup="incremental")
    with pytest.raises(ILReError, match="metadata"):
        store.index(["one"], [None], ids=["a"])
    assert encodes == [] and len(store) == 0


def _sources_file(store) -> tuple:
    shard = (
        store.directory / json.loads((store.directory / MANIFEST).read_text())["shards"][-1]["name"]
    )
    manifest = read_manifest(shard)
    return shard, manifest, shard / manifest["files"]["sources"]["name"]


@pytest.mark.parametrize(
    "payload",
    [[["a", "0" * 64]], [["a", "0" * 64], ["b", "xyz"]], [["a"], ["b", "0" * 64]], {"a": 1}],
)
def test_a_crafted_sources_payload_is_refused(tiny, tmp_path, payload):
    store = CorpusStore.create(tmp_path / "s", tiny)
    store.index(["one", "two"], ids=["a", "b"])
    shard, manifest, path = _sources_file(store)
    path.write_text(json.dumps(payload))
    write_manifest(shard, refresh_files(shard, manifest))
    with pytest.raises(EncodedContextError, match="sources"):
        CorpusStore.open(store.directory, tiny).source_ids()


def test_two_live_documents_under_one_id_are_refused(tiny, tmp_path):
    store = CorpusStore.create(tmp_path / "s", tiny)
    store.index(["one", "two"], ids=["a", "b"])
    shard, manifest, path = _sources_file(store)
    pairs = json.loads(path.read_text())
    path.write_text(json.dumps([pairs[0], [pairs[0][0], pairs[1][1]]]))
    write_manifest(shard, refresh_files(shard, manifest))
    with pytest.raises(EncodedContextError, match="two live documents"):
        CorpusStore.open(store.directory, tiny).source_ids()
