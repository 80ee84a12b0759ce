"""Saves that survive kill -9 at any moment and concurrent writers and readers: every copy
on disk loads as the old content or the new one, never a mix, for a bare encoded context
and for the corpus behind both retrievers."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from ilre_engine import EncodedContext, EncodedContextError
from ilre_engine.errors import ConfigError
from ilre_engine.manifest import digest as manifest_digest
from ilre_integrations._common import ContextCorpus, EncodedCorpus
from tests.crafting import (
    TEXTS_A,
    TEXTS_B,
    documents_context,
    engine_for,
    read_manifest,
    same_context,
    write_manifest,
)


@pytest.fixture(scope="module")
def tiny():
    return engine_for("gemma3")


@pytest.fixture(scope="module")
def contents(tiny):
    """Two contexts with equal document counts, and their corpora's metadata."""
    a = tiny.encode_tokens(documents_context(TEXTS_A))
    b = tiny.encode_tokens(documents_context(TEXTS_B, seed=1))
    return {
        "A": (a, [{"doc": "A0", "n": 0}, {"doc": "A1", "n": 1}]),
        "B": (b, [{"doc": "B0", "n": 0}, {"doc": "B1", "n": 1}]),
    }


def corpus_of(tiny, contents, which: str) -> ContextCorpus:
    corpus = ContextCorpus(tiny)
    corpus.encoded, metadata = contents[which]
    corpus.metadata = list(metadata)
    return corpus


def context_saver(tiny, contents):
    def save(directory: Path, which: str) -> None:
        contents[which][0].save(directory)

    def load(directory: Path) -> str:
        loaded = EncodedContext.load(directory, tiny)
        return next(w for w, (e, _) in contents.items() if same_context(loaded, e))

    return save, load


def corpus_saver(tiny, contents):
    def save(directory: Path, which: str) -> None:
        corpus_of(tiny, contents, which).save(directory)

    def load(directory: Path) -> str:
        loaded = EncodedCorpus.load(directory, tiny)
        for which, (encoded, metadata) in contents.items():
            if same_context(loaded.encoded, encoded):
                assert loaded.metadata == metadata, f"{which}'s documents, other metadata"
                return which
        raise AssertionError("the loaded corpus is neither A nor B")

    return save, load


KINDS = {"context": context_saver, "corpus": corpus_saver}


# -- 3. kill -9 at random moments -------------------------------------------------------------


def saving_child(save, directory: Path, report: int) -> None:
    """In a forked child: save B and A in turn until killed, one byte to `report` per save."""
    try:
        while True:
            for which in ("B", "A"):
                save(directory, which)
                os.write(report, b".")
    finally:
        os._exit(1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_kill_9_at_20_random_moments_leaves_old_or_new_never_mixed(tiny, contents, tmp_path, kind):
    save, load = KINDS[kind](tiny, contents)
    directory = tmp_path / kind
    save(directory, "A")
    rng = random.Random(1234)
    seen, saves, kills = set(), 0, 0
    # 20 kills, more (up to 80) until both copies were seen: on a loaded machine the child
    # may not finish a save between two kills.
    while kills < 20 or (seen != {"A", "B"} and kills < 80):
        kills += 1
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            saving_child(save, directory, write)
        os.close(write)
        with os.fdopen(read, "rb", buffering=0) as pipe:
            assert pipe.read(1) == b"."  # the child is saving: kill it at a random moment
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            saves += 1 + len(pipe.read())
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        seen.add(load(directory))
    assert saves >= 20
    assert seen == {"A", "B"}, seen  # the kills landed at different points
    save(directory, "A")  # the next save cleans up what the killed ones left
    context_dir = directory / "encoded" if kind == "corpus" else directory
    roles = sorted(p.name.split("-")[0] for p in context_dir.iterdir())
    expected = ["documents", "manifest.json", "tensors"]
    assert roles == sorted(expected + (["metadata"] if kind == "corpus" else [])), roles


class Interrupted(BaseException):
    """Stands for the process dying at that point."""


def test_a_corpus_save_interrupted_at_each_commit_step_is_old_or_new(
    tiny, contents, tmp_path, monkeypatch
):
    """The process dies at the first, second or third rename of a save (the commit points of
    a save in two steps): the copy is A or B, whole."""
    save, load = corpus_saver(tiny, contents)
    for step in (1, 2, 3):
        directory = tmp_path / str(step)
        save(directory, "A")
        real, calls = os.replace, []

        def replace(*args, step=step, calls=calls, real=real, **kwargs):
            calls.append(args)
            if len(calls) == step:
                raise Interrupted
            return real(*args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        with contextlib.suppress(Interrupted):
            save(directory, "B")
        monkeypatch.undo()
        assert load(directory) == ("A" if len(calls) == step else "B"), step


# -- 4. concurrent saves and loads ------------------------------------------------------------


def run_threads(*targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target):
        try:
            target()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.parametrize("kind", list(KINDS))
def test_two_threads_saving_to_one_directory_never_fail(tiny, contents, tmp_path, kind):
    save, load = KINDS[kind](tiny, contents)

    def writer(which):
        return lambda: [save(tmp_path, which) for _ in range(60)]

    errors = run_threads(writer("A"), writer("B"))
    assert not errors, f"{len(errors)} saves failed, first: {errors[0]!r}"
    assert load(tmp_path) in {"A", "B"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_loads_while_another_thread_saves_always_succeed(tiny, contents, tmp_path, kind):
    save, load = KINDS[kind](tiny, contents)
    save(tmp_path, "A")
    stop = threading.Event()
    loaded: list[str] = []

    def writer():
        while not stop.is_set():
            for which in ("B", "A"):
                save(tmp_path, which)

    def reader():
        try:
            for _ in range(600):
                loaded.append(load(tmp_path))
        finally:
            stop.set()

    errors = run_threads(writer, reader)
    assert not errors, f"{len(errors)} failed, first: {errors[0]!r}"
    assert len(loaded) == 600 and set(loaded) <= {"A", "B"}


def test_saves_from_two_processes_are_serialised(tiny, contents, tmp_path):
    save, load = context_saver(tiny, contents)
    save(tmp_path, "A")
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for _ in range(40):
                save(tmp_path, "B")
        except BaseException:
            code = 1
        os._exit(code)
    errors = run_threads(lambda: [save(tmp_path, "A") for _ in range(40)])
    _, status = os.waitpid(pid, 0)
    assert not errors and os.WEXITSTATUS(status) == 0, errors
    assert load(tmp_path) in {"A", "B"}


# -- compatibility: earlier formats still load, validated ------------------------------------


def as_version_1(directory: Path) -> dict:
    """Rewrite the manifest as format version 1 wrote it (no sizes, no own checksum, the
    tokenizer by name only)."""
    manifest = read_manifest(directory)
    for key in ("manifest_sha256", "tokenizer_sha256", "query_position"):
        del manifest[key]
    manifest["format_version"] = 1
    for entry in manifest["files"].values():
        del entry["size"]
    write_manifest(directory, manifest)
    return manifest


def test_format_version_2_still_loads_with_the_query_after_the_context(tiny, contents, tmp_path):
    encoded = contents["A"][0]
    encoded.save(tmp_path)
    manifest = read_manifest(tmp_path)
    del manifest["query_position"]
    manifest["format_version"] = 2
    manifest["manifest_sha256"] = manifest_digest(manifest)
    write_manifest(tmp_path, manifest)
    loaded = EncodedContext.load(tmp_path, tiny)
    assert same_context(loaded, encoded) and loaded.query_position == len(encoded)


def test_format_version_1_still_loads_and_is_validated(tiny, contents, tmp_path):
    encoded = contents["A"][0]
    encoded.save(tmp_path)
    manifest = as_version_1(tmp_path)
    assert same_context(EncodedContext.load(tmp_path, tiny), encoded)
    manifest["kept"]["0"]["keep"] = -5
    write_manifest(tmp_path, manifest)
    with pytest.raises(EncodedContextError, match="keep"):
        EncodedContext.load(tmp_path, tiny)


def test_a_corpus_in_the_two_file_layout_still_loads_and_is_validated(tiny, contents, tmp_path):
    encoded, metadata = contents["A"]
    encoded.save(tmp_path / "encoded")
    as_version_1(tmp_path / "encoded")
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    loaded = EncodedCorpus.load(tmp_path, tiny)
    assert same_context(loaded.encoded, encoded) and loaded.metadata == metadata
    (tmp_path / "metadata.json").write_text(json.dumps([1, 2]))
    with pytest.raises(EncodedContextError, match="metadata"):
        EncodedCorpus.load(tmp_path, tiny)
    corpus_of(tiny, contents, "B").save(tmp_path)  # saved over it: one commit, no metadata.json
    assert not (tmp_path / "metadata.json").exists()
    assert corpus_saver(tiny, contents)[1](tmp_path) == "B"


def test_corpus_metadata_keeps_what_json_holds_and_strs_the_rest(tiny, contents, tmp_path):
    corpus = corpus_of(tiny, contents, "A")
    corpus.metadata = [{"score": float("nan"), "when": Path("x")}, {"big": 2**70}]
    corpus.save(tmp_path)
    loaded = EncodedCorpus.load(tmp_path, tiny).metadata
    assert math.isnan(loaded[0]["score"]) and loaded[0]["when"] == "x"
    assert loaded[1] == {"big": 2**70}


def test_extra_payloads_are_saved_and_checked_with_the_context(tiny, contents, tmp_path):
    encoded = contents["A"][0]
    encoded.save(tmp_path, extra={"notes": {"k": [1, 2]}})
    loaded, extra = EncodedContext.load_with_extra(tmp_path, tiny)
    assert extra == {"notes": {"k": [1, 2]}} and same_context(loaded, encoded)
    notes = tmp_path / read_manifest(tmp_path)["files"]["notes"]["name"]
    notes.write_text('{"k": [1, 3]}')
    with pytest.raises(EncodedContextError, match="damaged"):
        EncodedContext.load_with_extra(tmp_path, tiny)
    with pytest.raises(ConfigError, match="invalid extra payload name"):
        encoded.save(tmp_path, extra={"../x": 1})
    with pytest.raises(ConfigError, match="extra"):
        encoded.save(tmp_path / "new", extra=[("notes", 1)])
    with pytest.raises(ConfigError, match="cannot be saved as JSON"):
        encoded.save(tmp_path / "new", extra={"notes": {1, 2}})
    assert not (tmp_path / "new").exists()
