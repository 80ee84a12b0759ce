"""Corpus encoding past one machine: `encode_corpus` spreads `CorpusStore` encoding over a Ray
Data actor pool and commits the result once.

Each actor of the pool builds one engine with the caller's factory (an engine holds a model
and cannot be pickled cheaply; a factory such as ``functools.partial(ILRe.from_pretrained,
...)`` can), and writes every batch of documents it is given as a pending shard of the store
with `store.write_shard`, which needs no lock and no manifest. Ahead of the pool, a stage of
CPU actors tokenises each batch and counts its reader tokens, so that this host work of one
batch overlaps the encoding of the one before instead of waiting in front of the GPU. The
driver collects the pending names in the dataset's order and makes them part of the store
with one `CorpusStore.commit`: until then no recall sees any of them, so a failed run leaves
the store as it was (its pending shards are removed by `CorpusStore.discard_pending`).

Ray is an optional dependency (``pip install "ilre[ray]"``): it is imported inside the
functions that need it, so importing this module, like importing `ilre_engine`, never does.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .budget import TokenCounter
from .config import require_int
from .context import TokenizedContext
from .errors import EmptyInputError, ILReError
from .inputs import as_documents
from .store import MANIFEST, CorpusStore, write_shard
from .tokenization import tokenize_each

if TYPE_CHECKING:
    import pyarrow
    import ray.data

    from .engine import ILRe

SHARD_COLUMN = "shard"
"""The one column of the mapped dataset: each batch's pending shard name."""

_TOKEN_ARRAYS = {
    "input_ids": np.int64,
    "doc_ids": np.int32,
    "offsets": np.int64,
    "word_ids": np.int64,
}
"""The arrays of a `TokenizedContext` (and their dtypes, as `tokenize_each` makes them) that
the tokenizer stage adds to a batch, each as a list column ``_ilre_<name>`` of one list per
document (offsets flattened)."""
_STAGE_PREFIX = "_ilre_"
"""The prefix of the columns the tokenizer stage adds, which no dataset column may have."""
_COUNT_COLUMN = f"{_STAGE_PREFIX}budget_count"
"""The column of each document's length in reader tokens, added by the tokenizer stage."""


def encode_corpus(
    dataset: ray.data.Dataset,
    store: CorpusStore | str | os.PathLike[str],
    engine_factory: Callable[[], ILRe],
    *,
    batch_size: int = 128,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float = 1,
    tokenizer_actors: int = 1,
    num_cpus_per_tokenizer: float = 1,
    text_column: str = "text",
    metadata_columns: Sequence[str] | None = None,
) -> list[int]:
    """Encode every row of `dataset` as a document of `store`, on a Ray actor pool; the
    documents' ids, in the dataset's order.

    Args:
        dataset: any Ray Dataset (files, parquet, ``ray.data.from_items``) with a
            `text_column` of strings (or UTF-8 bytes).
        store: an existing store (`CorpusStore.create` makes one), or its directory. The
            directory must be visible under the same path to every worker: a local disk for
            one machine, a shared file system (NFS, Lustre) for many. Given a directory,
            the driver builds one engine with `engine_factory` to check shards and commit
            them; open the store yourself with an engine fit for the driver (on the CPU,
            in the workers' dtype: the model's fingerprint is taken from its weights as
            loaded) to avoid that.
        engine_factory: builds an actor's engine; it is pickled and sent to each actor, so a
            module-level function or a `functools.partial`, not a lambda of the session.
            Every engine it builds must match the store's model, layer and tokenizer.
        batch_size: documents per batch, and so per shard. An actor holds a batch's keys in
            memory until its shard is written; recall opens every shard, so very small
            batches make many small files. Ray Data cuts batches at block borders, so a
            dataset of about ``rows / batch_size`` blocks (``override_num_blocks=`` of its
            reader) gives whole batches; its default blocks can give twice as many shards.
        num_actors: the pool's size, each actor with its own engine: one per GPU.
        num_gpus_per_actor: GPUs reserved for each actor (1 to give each its own GPU; the
            factory then builds the engine on ``cuda``, which Ray maps to that GPU).
        num_cpus_per_actor: CPUs reserved for each actor; Ray sets its ``OMP_NUM_THREADS``,
            and so torch's threads, to it.
        tokenizer_actors: CPU actors that tokenise each batch and count its reader tokens
            ahead of the encoding actors (a stage of the same batches before theirs), so that
            an encoder's device never waits for that host work: Ray Data runs the stage on
            the next batches while the encoders encode. They use the driver's engine's
            tokenizer and budget counter (`store.engine`), pickled. 0: each encoding actor
            tokenises and counts its batches itself, before encoding them.
        num_cpus_per_tokenizer: CPUs reserved for each tokenizer actor. The cluster needs
            them besides the encoders' CPUs: Ray starts an actor only where its reservation
            fits, so a reservation that does not fit waits for resources that never come.
        text_column: the column of document texts.
        metadata_columns: columns stored as each document's metadata (`CorpusStore.document`
            returns them); None stores none.

    Raises:
        ILReError: `store` is a directory that holds no store, a column is missing,
            `tokenizer_actors` is not a count, or the actors reserve more CPUs or GPUs than
            the cluster has (checked on the driver before any actor starts);
            `EmptyInputError` for a dataset without a schema (an empty one).
        ray.exceptions.RayError: a worker failed, with the worker's error in its message: a
            batch that cannot be encoded (`RayTaskError`), an engine that does not match the
            store or a store this worker cannot see (`ActorDiedError`). Any failure ends the
            run before the commit, leaving the store as it was.
    """
    import ray

    metadata = list(metadata_columns or ())
    _check_columns(dataset, [text_column, *metadata])
    require_int("tokenizer_actors", tokenizer_actors, low=0)
    _check_fits(
        {
            "CPU": num_actors * num_cpus_per_actor + tokenizer_actors * num_cpus_per_tokenizer,
            "GPU": num_actors * num_gpus_per_actor,
        }
    )
    if not isinstance(store, CorpusStore):
        directory = Path(store)
        if not (directory / MANIFEST).is_file():
            raise ILReError(
                f"no corpus store at {directory}: create one first with "
                "CorpusStore.create(directory, engine)"
            )
        store = CorpusStore.open(directory, engine_factory())
    counter = None
    if tokenizer_actors:
        counter = store.engine.counter.name
        dataset = dataset.map_batches(
            _Tokenizer,
            fn_constructor_args=(store.engine.tokenizer, store.engine.counter, text_column),
            # The encoders' batch size: their batches are then this stage's, so the shards
            # are those of a run without the stage.
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=tokenizer_actors),
            num_cpus=num_cpus_per_tokenizer,
        )
    mapped = dataset.map_batches(
        _ShardWriter,
        # Absolute: a worker's working directory is not the driver's.
        fn_constructor_args=(
            os.path.abspath(store.directory),
            engine_factory,
            text_column,
            metadata,
            counter,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        # One batch at a time per actor: two at once (max_concurrent_calls_per_actor=2 with
        # true multi-threading) ran 1.2x the single process on an H200 but wrote keys that
        # differ from it (docs/lab-notes.md, "Two batches at once in an actor").
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=num_gpus_per_actor,
        num_cpus=num_cpus_per_actor,
    )
    with _in_order_and_complete(mapped.context):
        names = [row[SHARD_COLUMN] for row in mapped.take_all()]
    ids = store.commit(names) if names else []
    return [document for shard in ids for document in shard]


class _Tokenizer:
    """A Ray actor of `encode_corpus` ahead of the encoders: each batch with its documents'
    tokens (`tokenize_each`) and reader-token counts as added columns."""

    def __init__(self, tokenizer: Any, counter: TokenCounter, text_column: str) -> None:
        self._tokenizer = tokenizer
        self._counter = counter
        self._text_column = text_column

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        import pyarrow

        texts = batch.column(self._text_column).to_pylist()
        # Checked as write_shard checks them (a row that is not text fails here); a block
        # that an upstream filter emptied gets empty columns.
        documents = as_documents(texts) if texts else ()
        tokenized = tokenize_each(self._tokenizer, documents) if documents else []
        for name, column in _token_columns(tokenized).items():
            batch = batch.append_column(name, column)
        counts = [self._counter.count(text) for text in documents]
        return batch.append_column(_COUNT_COLUMN, pyarrow.array(counts, pyarrow.int64()))


def _token_columns(tokenized: Sequence[TokenizedContext]) -> dict[str, pyarrow.ListArray]:
    """The `_TOKEN_ARRAYS` of one-document contexts as list columns, one list per context."""
    import pyarrow

    columns = {}
    for name, dtype in _TOKEN_ARRAYS.items():
        arrays = [getattr(context, name).reshape(-1) for context in tokenized]
        bounds = np.cumsum([0, *(len(array) for array in arrays)], dtype=np.int32)
        values = np.concatenate([np.zeros(0, dtype), *arrays]).astype(dtype, copy=False)
        columns[f"{_STAGE_PREFIX}{name}"] = pyarrow.ListArray.from_arrays(bounds, values)
    return columns


def _tokenized(batch: pyarrow.Table, texts: Sequence[str]) -> list[TokenizedContext]:
    """The contexts of `texts` that `_token_columns` made into `batch`'s columns."""
    arrays = {}
    for name in _TOKEN_ARRAYS:
        column = batch.column(f"{_STAGE_PREFIX}{name}").combine_chunks()
        # Writable copies: torch reads the ids with from_numpy, which warns on Arrow's
        # read-only buffers.
        values = column.flatten().to_numpy(zero_copy_only=False, writable=True)
        arrays[name] = np.split(values, np.cumsum(column.value_lengths().to_numpy())[:-1])
    return [
        TokenizedContext(
            documents=(text,),
            input_ids=input_ids,
            doc_ids=doc_ids,
            offsets=offsets.reshape(-1, 2),
            word_ids=word_ids,
        )
        for text, input_ids, doc_ids, offsets, word_ids in zip(
            texts, *(arrays[name] for name in _TOKEN_ARRAYS), strict=True
        )
    ]


class _ShardWriter:
    """A Ray actor of `encode_corpus`: one engine, one pending shard per batch. With
    `counter`, the name of the budget counter of a `_Tokenizer` stage ahead, the batches
    carry their tokens and counts; without it, this actor tokenises and counts them."""

    def __init__(
        self,
        directory: str,
        engine_factory: Callable[[], ILRe],
        text_column: str,
        metadata_columns: Sequence[str],
        counter: str | None = None,
    ) -> None:
        if not (Path(directory) / MANIFEST).is_file():
            raise ILReError(
                f"no corpus store at {directory} as seen from {socket.gethostname()}: the store "
                "must lie on a file system that every worker sees under the same path"
            )
        self._engine = engine_factory()
        # Before any work: this worker's engine is the store's model, layer and tokenizer
        # (else every shard it wrote would be refused at the commit).
        CorpusStore.open(directory, self._engine)
        self._directory = directory
        self._text_column = text_column
        self._metadata_columns = list(metadata_columns)
        self._counter = counter

    def __call__(self, batch: pyarrow.Table) -> dict[str, np.ndarray]:
        texts = batch.column(self._text_column).to_pylist()
        if not texts:  # a block that an upstream filter emptied: no shard for it
            return {SHARD_COLUMN: np.array([], dtype=object)}
        # to_pylist gives plain Python values (not numpy scalars), so metadata is stored as
        # `CorpusStore.add` would store the same values.
        columns = {name: batch.column(name).to_pylist() for name in self._metadata_columns}
        metadata = [
            {name: values[i] for name, values in columns.items()} for i in range(len(texts))
        ]
        tokenized, counts = None, None
        if self._counter is not None:
            texts = list(as_documents(texts))  # bytes decoded, as the tokenizer stage read them
            tokenized = _tokenized(batch, texts)
            counts = {self._counter: batch.column(_COUNT_COLUMN).to_pylist()}
        name = write_shard(
            self._directory,
            self._engine,
            texts,
            metadata,
            progress=False,
            tokenized=tokenized,
            budget_counts=counts,
        )
        return {SHARD_COLUMN: np.array([name], dtype=object)}


def _check_fits(reserved: dict[str, float]) -> None:
    """Refuse reservations that the cluster cannot hold all at once: Ray Data would wait
    for them without end, with no error (an actor starts only where its reservation fits)."""
    import ray

    available = ray.cluster_resources()
    for resource, wanted in reserved.items():
        if wanted > available.get(resource, 0):
            raise ILReError(
                f"the actors reserve {wanted:g} {resource}s and the Ray cluster has "
                f"{available.get(resource, 0):g}: use fewer actors or smaller reservations "
                "(tokenizer_actors=0 lets the encoding actors tokenise); on an autoscaling "
                "cluster, start its nodes first"
            )


def _check_columns(dataset: ray.data.Dataset, wanted: Sequence[str]) -> None:
    """Refuse a dataset that lacks a column `encode_corpus` reads, or has one that its
    tokenizer stage writes, before any actor starts."""
    columns = dataset.columns()
    if columns is None:
        raise EmptyInputError("the dataset has no schema (is it empty?): nothing to encode")
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise ILReError(
            f"the dataset has no column {missing[0]!r}; its columns are {columns} "
            "(text_column= and metadata_columns= choose them)"
        )
    taken = [name for name in columns if name.startswith(_STAGE_PREFIX)]
    if taken:
        raise ILReError(
            f"the dataset's column {taken[0]!r} has a name the tokenizer stage writes "
            f"({_STAGE_PREFIX}*): rename it"
        )


@contextlib.contextmanager
def _in_order_and_complete(context: Any) -> Iterator[None]:
    """While encoding: outputs in the order of the input blocks (document ids follow the
    dataset's order), and no failed block skipped (a commit would lose its documents
    silently). A dataset shares its context with the dataset it was derived from, the
    caller's, so the caller's settings are put back afterwards."""
    options = context.execution_options
    saved = options.preserve_order, context.max_errored_blocks
    options.preserve_order, context.max_errored_blocks = True, 0
    try:
        yield
    finally:
        options.preserve_order, context.max_errored_blocks = saved
