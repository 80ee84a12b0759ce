"""`encode_corpus`: a store encoded on a Ray actor pool is the store one process encodes."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest
import torch
from transformers import AutoModel

from ilre_engine import EmptyInputError, ILRe, ILReConfig, ILReError, persistence
from ilre_engine.store import CorpusStore
from ilre_engine.tokenization import tokenize_each
from tests.tiny_models import worded_config

ray = pytest.importorskip("ray", reason="encode_corpus needs ray: pip install 'ilre[ray]'")
from ilre_engine.distributed import (  # noqa: E402  (after the skip)
    _ShardWriter,
    _tokenized,
    _Tokenizer,
    encode_corpus,
)

QUESTION = "Which lock logged a delay of 21 minutes?"
DOCUMENTS = [
    f"Entry {i}: the keeper of lock {i} logged a delay of {i * 7} minutes at the gate. " * 3
    for i in range(7)
]
SETTINGS = ILReConfig(chunk_size=32, max_query_tokens=24)


def _save_tiny(directory, tokenizer, seed: int) -> None:
    """A tiny Gemma 3 over the embedded model's tokenizer (window 160, so the longer documents
    are read in segments), saved as a model directory that `ILRe.from_pretrained` loads."""
    config = worded_config(tokenizer)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _factory(directory) -> functools.partial[ILRe]:
    """What a user hands to `encode_corpus`: a picklable recipe for an engine, built again in
    each actor (the workers need no access to this test module)."""
    return functools.partial(
        ILRe.from_pretrained, str(directory), device="cpu", layer=1, config=SETTINGS, profile=False
    )


@pytest.fixture(scope="module")
def factory(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    _save_tiny(directory, tokenizer, seed=0)
    return _factory(directory)


@pytest.fixture(scope="module")
def tiny(factory):
    return factory()


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs for the module: two actors of one CPU each. Only
    names travel through the object store, so a small one spares the machine's memory."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 1024**2,
    )
    yield
    ray.shutdown()


def _rows(documents):
    return [{"text": d, "n": i, "tags": ["lock", str(i)]} for i, d in enumerate(documents)]


def _shards(store: CorpusStore):
    """Each committed shard of `store`, in order: its record, its extra payloads and its ids."""
    manifest = store._manifest
    for entry in manifest["shards"]:
        record, extra = persistence.read(store.directory / entry["name"], store.engine, mapped=True)
        first = entry["first_document"]
        yield record, extra, list(range(first, first + entry["documents"]))


def test_a_store_encoded_on_ray_is_the_store_one_process_encodes(cluster, factory, tiny, tmp_path):
    """Two runs of two encoding actors: the first with the tokenizer stage ahead of them (the
    default; the three actors share the cluster's two CPUs), the second, appending the same
    rows, without it (each encoding actor tokenising its batches). Each run's shards are those
    of one process, shard for shard."""
    store = CorpusStore.create(tmp_path / "ray", tiny)
    # About one block per batch, as `ilre index --ray` builds its dataset.
    dataset = ray.data.from_items(_rows(DOCUMENTS), override_num_blocks=3)
    settings = {"batch_size": 3, "num_actors": 2, "metadata_columns": ["n", "tags"]}
    ids = encode_corpus(
        dataset,
        store.directory,
        factory,
        num_cpus_per_actor=0.75,
        num_cpus_per_tokenizer=0.5,
        **settings,
    )
    assert ids == list(range(7))
    # The caller's dataset settings are as they were (encoding needed ordered outputs).
    assert dataset.context.execution_options.preserve_order is False
    # A second run appends after what is there, and a store given as an open one works alike.
    more = encode_corpus(dataset, store, factory, tokenizer_actors=0, **settings)
    assert more == list(range(7, 14))
    store = CorpusStore.open(store.directory, tiny)
    shards = list(_shards(store))
    batches = [list(record.documents) for record, _, _ in shards]
    assert [len(b) for b in batches] == [3, 3, 1] * 2  # whole batches, with the stage or not
    assert [d for b in batches for d in b] == DOCUMENTS * 2  # in the dataset's order

    # The same batches through `CorpusStore.add`, one process, one engine.
    alone = CorpusStore.create(tmp_path / "alone", tiny)
    start = 0
    for batch in batches:
        rows = (_rows(DOCUMENTS) * 2)[start : start + len(batch)]
        alone.add(batch, [{"n": r["n"], "tags": r["tags"]} for r in rows])
        start += len(batch)
    expected = list(_shards(alone))
    assert len(shards) == len(expected)
    for (record, extra, owned), (record_1, extra_1, owned_1) in zip(shards, expected, strict=True):
        assert owned == owned_1 and record.documents == record_1.documents
        assert extra == extra_1  # metadata as plain values, and the budget counts
        assert torch.equal(record.keys, record_1.keys)
        assert record.tokens.keys() == record_1.tokens.keys()
        for name, array in record.tokens.items():
            assert np.array_equal(array, record_1.tokens[name]), name
    assert store.document(4) == (DOCUMENTS[4], {"n": 4, "tags": ["lock", "4"]})
    assert store.document(11) == store.document(4)
    assert store.recall(QUESTION, budget_tokens=25) == alone.recall(QUESTION, budget_tokens=25)


def test_a_failed_batch_leaves_the_store_as_it_was(cluster, factory, tiny, tmp_path):
    store = CorpusStore.create(tmp_path / "s", tiny)
    store.add(DOCUMENTS[:2])
    rows = [{"text": d} for d in DOCUMENTS[2:]] + [{"text": None}]  # a row with no text
    with pytest.raises(ray.exceptions.RayTaskError, match="is a NoneType, not text"):
        encode_corpus(
            ray.data.from_items(rows),
            store,
            factory,
            batch_size=2,
            num_actors=2,
            num_cpus_per_actor=0.5,
        )
    reopened = CorpusStore.open(store.directory, tiny)
    assert len(reopened) == 2 and reopened.num_tokens == store.num_tokens
    reopened.discard_pending()  # whatever the batches that did succeed wrote
    assert sorted(p.name.split("-")[0] for p in store.directory.iterdir() if p.is_dir()) == [
        "shard"
    ]


def test_a_worker_with_another_model_is_refused_before_it_encodes(
    cluster, tokenizer, tiny, tmp_path
):
    store = CorpusStore.create(tmp_path / "s", tiny)
    _save_tiny(tmp_path / "other", tokenizer, seed=1)
    with pytest.raises(ray.exceptions.ActorDiedError, match="was encoded by"):
        encode_corpus(  # no tokenizer stage: its actor would only add to the test's time
            ray.data.from_items([{"text": "x"}]),
            store,
            _factory(tmp_path / "other"),
            tokenizer_actors=0,
        )
    assert not any(p.name.startswith("pending-") for p in store.directory.iterdir())


def test_bad_input_is_refused_before_any_work(cluster, factory, tiny, tmp_path):
    dataset = ray.data.from_items([{"body": DOCUMENTS[0], "n": 0}])
    store = CorpusStore.create(tmp_path / "s", tiny)
    with pytest.raises(ILReError, match=r"no column 'text'.*'body'"):
        encode_corpus(dataset, store, factory)
    with pytest.raises(ILReError, match="no column 'source'"):
        encode_corpus(dataset, store, factory, text_column="body", metadata_columns=["source"])
    with pytest.raises(ILReError, match="create one first"):
        encode_corpus(dataset, tmp_path / "none", factory, text_column="body")
    with pytest.raises(EmptyInputError):
        encode_corpus(ray.data.from_items([]), store, factory)
    with pytest.raises(ILReError, match="'_ilre_input_ids' has a name the tokenizer stage"):
        encode_corpus(ray.data.from_items([{"text": "a", "_ilre_input_ids": 1}]), store, factory)
    # The cluster has 2 CPUs and no GPU: Ray Data would wait for these actors forever.
    with pytest.raises(ILReError, match="reserve 3 CPUs and the Ray cluster has 2"):
        encode_corpus(dataset, store, factory, text_column="body", num_actors=2)
    with pytest.raises(ILReError, match="reserve 1 GPUs and the Ray cluster has 0"):
        encode_corpus(dataset, store, factory, text_column="body", num_gpus_per_actor=1)


def test_an_emptied_block_writes_no_shard(tiny, tmp_path):
    """An upstream filter can leave a block with no rows: its batch yields no shard name."""
    import pyarrow

    store = CorpusStore.create(tmp_path / "s", tiny)
    writer = _ShardWriter(str(store.directory), lambda: tiny, "text", ["n"])
    empty = pyarrow.table(
        {"text": pyarrow.array([], pyarrow.string()), "n": pyarrow.array([], pyarrow.int64())}
    )
    assert len(writer(empty)["shard"]) == 0
    (name,) = writer(pyarrow.table({"text": [DOCUMENTS[0]], "n": [3]}))["shard"]
    assert store.commit([name]) == [[0]] and store.document(0) == (DOCUMENTS[0], {"n": 3})
    # Through the tokenizer stage: an empty block gets empty columns, and still no shard.
    stage = _Tokenizer(tiny.tokenizer, tiny.counter, "text")
    writer = _ShardWriter(str(store.directory), lambda: tiny, "text", ["n"], tiny.counter.name)
    assert len(writer(stage(empty))["shard"]) == 0


def test_the_tokenizer_stage_sends_what_the_encoders_would_compute(tiny):
    """Its columns give back `tokenize_each`'s contexts exactly (values and dtypes), from any
    slice of its block (Ray Data may cut one), and the counts of the engine's counter, which
    it receives pickled."""
    import pyarrow

    stage = _Tokenizer(tiny.tokenizer, pickle.loads(pickle.dumps(tiny.counter)), "text")
    batch = stage(pyarrow.table({"text": DOCUMENTS[:4], "n": [0, 1, 2, 3]}))
    assert batch.column("n").to_pylist() == [0, 1, 2, 3] and batch.num_rows == 4
    counts = batch.column("_ilre_budget_count").to_pylist()
    assert counts == [tiny.counter.count(text) for text in DOCUMENTS[:4]]
    rebuilt = _tokenized(batch.slice(1, 2), DOCUMENTS[1:3])
    expected = tokenize_each(tiny.tokenizer, DOCUMENTS[1:3])
    for context, context_1 in zip(rebuilt, expected, strict=True):
        assert context.documents == context_1.documents
        for name in ("input_ids", "doc_ids", "offsets", "word_ids"):
            array, array_1 = getattr(context, name), getattr(context_1, name)
            assert array.dtype == array_1.dtype and np.array_equal(array, array_1), name
