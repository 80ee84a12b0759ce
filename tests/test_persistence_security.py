"""Loading a saved context trusts nothing in its directory: file names stay inside it, the
manifest's structure and checksum are checked, crafted data files with matching checksums
are refused unless consistent, and the tokenizer is identified by content, not path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ilre_engine import EncodedContext, EncodedContextError, ILRe
from ilre_engine.tokenization import tokenizer_identity
from ilre_integrations._common import ContextCorpus, EncodedCorpus
from tests.conftest import QUESTION
from tests.crafting import (
    TEXTS_A,
    TEXTS_B,
    documents_context,
    engine_for,
    file_entry,
    read_manifest,
    read_tensors,
    recording_opens,
    replace_documents,
    replace_tensors,
    write_manifest,
)

# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return engine_for("gemma3")


@pytest.fixture(scope="module")
def encoded_a(tiny):
    return tiny.encode_tokens(documents_context(TEXTS_A))


@pytest.fixture(scope="module")
def encoded_b(tiny):
    return tiny.encode_tokens(documents_context(TEXTS_B, seed=1))


@pytest.fixture
def saved(tmp_path, encoded_a):
    return encoded_a.save(tmp_path / "ctx")


@pytest.fixture
def victim(tmp_path, encoded_b):
    return encoded_b.save(tmp_path / "victim")


def point_files_at(directory: Path, names: dict[str, str], entries: dict[str, dict]) -> None:
    manifest = read_manifest(directory)
    for role, name in names.items():
        manifest["files"][role] = {**entries[role], "name": name}
    write_manifest(directory, manifest)


# -- 1. names stay inside the directory -------------------------------------------------------


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_manifest_naming_another_directorys_files_is_refused(tiny, saved, victim, how):
    theirs = read_manifest(victim)["files"]
    names = {
        role: (f"../victim/{entry['name']}" if how == "relative" else str(victim / entry["name"]))
        for role, entry in theirs.items()
    }
    point_files_at(saved, names, theirs)
    with (
        recording_opens() as opened,
        pytest.raises(EncodedContextError, match="refusing file name"),
    ):
        EncodedContext.load(saved, tiny)
    assert not [p for p in opened if p.startswith(str(victim))]


def test_the_answer_does_not_reveal_which_outside_files_exist(tiny, saved):
    sentinel = saved.parent / "secret.txt"
    sentinel.write_text("not yours")
    entries = read_manifest(saved)["files"]
    messages = []
    for target in ("secret.txt", "absent.txt"):
        for name in (f"../{target}", str(saved.parent / target)):
            point_files_at(saved, {"tensors": name}, entries)
            with (
                recording_opens() as opened,
                pytest.raises(EncodedContextError) as raised,
            ):
                EncodedContext.load(saved, tiny)
            assert str(sentinel) not in opened
            messages.append(str(raised.value).replace(target, "X"))
    assert messages[0] == messages[2] and messages[1] == messages[3], messages


def test_a_symlink_out_of_the_directory_is_refused(tiny, saved, victim):
    theirs = read_manifest(victim)["files"]["tensors"]
    link = saved / "tensors-0123456789ab.safetensors"
    link.symlink_to(victim / theirs["name"])
    point_files_at(saved, {"tensors": link.name}, {"tensors": theirs})
    with (
        recording_opens() as opened,
        pytest.raises(EncodedContextError, match="outside the directory"),
    ):
        EncodedContext.load(saved, tiny)
    assert not [p for p in opened if "victim" in p or p == str(link)]


def test_an_oversized_manifest_is_refused_unparsed(tiny, saved):
    manifest = read_manifest(saved)
    manifest["padding"] = "x" * (2 << 20)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EncodedContextError, match="bytes, over"):
        EncodedContext.load(saved, tiny)


def test_absurd_declared_shapes_are_refused_before_the_data_is_read(tiny, saved):
    manifest = read_manifest(saved)
    huge = 10**12
    manifest["num_tokens"] = huge
    manifest["shapes"] = {
        name: [huge if dim == 70 else dim for dim in shape]
        for name, shape in manifest["shapes"].items()
    }
    write_manifest(saved, manifest)
    tensors = saved / manifest["files"]["tensors"]["name"]
    with recording_opens() as opened, pytest.raises(EncodedContextError):
        EncodedContext.load(saved, tiny)
    assert str(tensors) not in opened


# -- 2. the manifest's structure --------------------------------------------------------------


def edit(manifest: dict, path: tuple[str, ...], value=None, *, delete: bool = False) -> dict:
    manifest = copy.deepcopy(manifest)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return manifest


@pytest.mark.parametrize(
    "path",
    [
        ("files",),
        ("shapes",),
        ("kept",),
        ("num_tokens",),
        ("window",),
        ("files", "tensors", "sha256"),
        ("files", "documents", "name"),
        ("kept", "0", "keep"),
        ("shapes", "kept.1.recent_values"),
    ],
    ids=".".join,
)
def test_a_missing_key_is_refused(tiny, saved, path):
    write_manifest(saved, edit(read_manifest(saved), path, delete=True))
    with pytest.raises(EncodedContextError, match="missing"):
        EncodedContext.load(saved, tiny)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("files",), []),
        (("files", "tensors"), "tensors-000000000000.safetensors"),
        (("files", "tensors", "name"), 5),
        (("kept",), []),
        (("kept", "0"), 3),
        (("kept", "0", "keep"), -5),
        (("kept", "1", "sink_size"), 3),
        (("num_documents",), "2"),
        (("shapes", "keys"), None),
    ],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else repr(v)[:12],
)
def test_a_mistyped_or_out_of_range_value_is_refused(tiny, saved, path, value):
    write_manifest(saved, edit(read_manifest(saved), path, value))
    with pytest.raises(EncodedContextError, match=r"invalid|refusing"):
        EncodedContext.load(saved, tiny)


@pytest.mark.parametrize("text", ["[" * 100000, '{"a":' * 50000], ids=["lists", "objects"])
def test_unparseable_manifests_are_refused(tiny, saved, text):
    (saved / "manifest.json").write_text(text)
    with pytest.raises(EncodedContextError):
        EncodedContext.load(saved, tiny)


def test_an_edited_manifest_fails_its_own_checksum(tiny, saved):
    manifest = read_manifest(saved)
    manifest["model_name"] = "someone else"
    write_manifest(saved, manifest, seal=False)
    with pytest.raises(EncodedContextError, match="checksum mismatch"):
        EncodedContext.load(saved, tiny)


def _set(tensors, name, value):
    return {**tensors, name: value}


CRAFTED_TENSORS = {
    "document id past the documents": lambda t: _set(t, "doc_ids", t["doc_ids"].clone().fill_(7)),
    "document id wrapping in int32": lambda t: _set(t, "doc_ids", t["doc_ids"].long() + (1 << 32)),
    "offsets past the document": lambda t: _set(t, "offsets", t["offsets"] + 1000),
    "reversed offsets": lambda t: _set(t, "offsets", t["offsets"].flip(1)),
    "huge word id": lambda t: _set(
        t, "word_ids", torch.cat([t["word_ids"][:-1], torch.tensor([10**12])])
    ),
    "decreasing word ids": lambda t: _set(t, "word_ids", t["word_ids"].flip(0)),
    "negative token id": lambda t: _set(t, "input_ids", t["input_ids"] - 300),
    "float token ids": lambda t: _set(t, "input_ids", t["input_ids"].double()),
    "a kept window one short": lambda t: _set(
        t, "kept.1.recent_keys", t["kept.1.recent_keys"][:, 1:]
    ),
    "an unknown tensor": lambda t: _set(t, "extra", torch.zeros(3)),
}


@pytest.mark.parametrize("craft", list(CRAFTED_TENSORS), ids=str)
def test_crafted_tensors_with_matching_checksums_are_refused(tiny, saved, craft):
    replace_tensors(saved, CRAFTED_TENSORS[craft](read_tensors(saved)))
    with pytest.raises(EncodedContextError):
        EncodedContext.load(saved, tiny)


def test_a_dropped_early_layer_is_refused(tiny, saved):
    tensors = {k: v for k, v in read_tensors(saved).items() if not k.startswith("kept.1.")}
    replace_tensors(saved, tensors)
    write_manifest(saved, edit(read_manifest(saved), ("kept", "1"), delete=True))
    with pytest.raises(EncodedContextError):
        EncodedContext.load(saved, tiny)


@pytest.mark.parametrize(
    "documents", [{"a": 1, "b": 2}, [1, 2], [["a"], "b"]], ids=["object", "ints", "nested"]
)
def test_crafted_documents_with_matching_checksums_are_refused(tiny, saved, documents):
    replace_documents(saved, documents)
    with pytest.raises(EncodedContextError):
        EncodedContext.load(saved, tiny)


def test_documents_that_are_not_utf8_are_refused(tiny, saved):
    manifest = read_manifest(saved)
    path = saved / manifest["files"]["documents"]["name"]
    path.write_bytes(b'["\xff\xfe", "x"]')
    manifest["files"]["documents"] = {
        k: file_entry(path)[k] for k in manifest["files"]["documents"]
    }
    write_manifest(saved, manifest)
    with pytest.raises(EncodedContextError):
        EncodedContext.load(saved, tiny)


# -- 8. the tokenizer is identified by content ------------------------------------------------


@pytest.fixture(scope="module")
def relocated(engine, tmp_path_factory):
    """The embedded engine's model with its tokenizer loaded from another directory."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("elsewhere")
    engine.tokenizer.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.name_or_path != engine.tokenizer.name_or_path
    return ILRe(
        engine.model,
        tokenizer,
        layer=engine.layer,
        name=engine.name,
        config=engine.config,
        profile=engine.profile,
        hybrid=engine.hybrid,
    )


def test_a_corpus_loads_with_the_same_tokenizer_from_another_path(engine, relocated, tmp_path):
    corpus = ContextCorpus(engine)
    corpus.add(["The tide turns at noon.", "The crew waits twenty-five minutes."], [{}, {}])
    corpus.save(tmp_path)
    loaded = EncodedCorpus.load(tmp_path, relocated)
    assert loaded.recall(QUESTION, budget_tokens=12) == corpus.recall(QUESTION, budget_tokens=12)


def test_a_context_loads_with_the_same_tokenizer_from_another_path(engine, relocated, tmp_path):
    encoded = engine.encode(["The crew waits twenty-five minutes at low tide."])
    encoded.save(tmp_path)
    loaded = EncodedContext.load(tmp_path, relocated)
    assert relocated.recall(loaded, QUESTION, budget_tokens=8) == engine.recall(
        encoded, QUESTION, budget_tokens=8
    )


def test_another_tokenizer_under_the_same_name_is_refused(engine, relocated, tmp_path):
    corpus = ContextCorpus(engine)
    corpus.add(["The tide turns at noon."], [{}])
    corpus.save(tmp_path)
    changed = copy.deepcopy(relocated.tokenizer)
    changed.add_tokens(["zzqqxx"])
    changed.name_or_path = engine.tokenizer.name_or_path
    other = ILRe(engine.model, changed, layer=engine.layer, name=engine.name)
    assert other.tokenizer_name == engine.tokenizer_name
    with pytest.raises(EncodedContextError, match="tokenizer"):
        EncodedCorpus.load(tmp_path, other)


def test_tokenizer_identity_is_content_and_none_without_a_tokenizer(engine, relocated):
    assert tokenizer_identity(None) == "none"
    identity = tokenizer_identity(engine.tokenizer)
    assert identity == tokenizer_identity(relocated.tokenizer)
    assert len(identity) == 64
    changed = copy.deepcopy(relocated.tokenizer)
    assert tokenizer_identity(changed) == identity
    changed.add_tokens(["zzqqxx"])  # changed after its identity was cached
    assert tokenizer_identity(changed) != identity
