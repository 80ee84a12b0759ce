"""``ilre index``: bring a corpus store up to date with files, re-runnably.

A document's identity in the store is its file's absolute path (``<stdin>`` for standard
input) plus its content: indexing again skips unchanged files without encoding them,
replaces changed ones, and with ``--cleanup full`` deletes the documents whose file is no
longer among those indexed (LangChain's indexing API calls this full cleanup)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ILReError
from .model import load_engine
from .output import shows_progress, summary, warn
from .parser import add_command, add_device, add_model, add_quiet, add_store
from .preflight import preflight
from .ray_driver import add_arguments as add_ray_arguments
from .ray_driver import driver_engine, encode_on_ray, import_ray, ray_options
from .reading import MAX_INPUT_BYTES, STDIN, TEXT_SUFFIXES, Document, expand, read_documents
from .store_files import check_store_path, holds_store

_OUTCOMES = ("added", "updated", "skipped", "deleted")
"""What ``ilre index`` did to each document, in the order its summary line counts them."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "index",
        "bring a corpus store up to date with documents on disk",
        "Encode documents, one per file, into a corpus store (created if needed), each\n"
        "known by its file's absolute path, kept as its metadata 'source'. Run again,\n"
        "unchanged files are skipped, changed ones replaced, and with\n"
        "--cleanup full the documents of files not given are deleted. Empty files are\n"
        "skipped with a warning. `ilre query` recalls from the store.",
    )
    add_store(command)
    command.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="PATH",
        help=f"documents, one per file; a directory adds its files ({', '.join(TEXT_SUFFIXES)}, "
        f"recursively, hidden ones skipped); default: standard input (known as {STDIN}); at "
        f"most {MAX_INPUT_BYTES // 2**20} MiB in all per call",
    )
    command.add_argument(
        "--cleanup",
        choices=["full"],
        help="full: also delete the store's documents whose path is not among these",
    )
    add_model(command)
    add_device(command, "; with --ray the actors' (default: cuda with --gpus-per-actor, else cpu)")
    add_quiet(command)
    add_ray_arguments(command)


def source_id(document: Document) -> str:
    """A document's id in the store: its file's absolute path, the same from any working
    directory (not resolved through symbolic links: the path the user names)."""
    return document.source if document.source == STDIN else os.path.abspath(document.source)


def run(args: argparse.Namespace) -> int:
    check_store_path(args.store)
    exists = holds_store(args.store)  # a damaged manifest: said before the model loads
    on_ray = ray_options(args)  # refused before reading input or loading
    if on_ray is not None and args.cleanup is not None:
        raise ILReError("--cleanup does not work with --ray yet: index without --ray")
    documents = read_documents(expand(args.files), "index")
    for document in documents:
        if document.is_empty:
            warn(f"skipped {document.source}: empty (only whitespace)")
    documents = [d for d in documents if not d.is_empty]
    if on_ray is None:
        preflight(args.model, args.device)
        engine = load_engine(args, device=args.device)
    else:
        ray = import_ray()
        engine = driver_engine(args.model, on_ray.device)
    from ..store import CorpusStore

    store = (CorpusStore.open if exists else CorpusStore.create)(args.store, engine)
    texts = [d.text for d in documents]
    ids = [source_id(d) for d in documents]
    # The source is the id: the path as typed would make the same file, indexed from
    # another directory, a changed document (the content digest covers the metadata).
    metadata = [{"source": i} for i in ids]
    if on_ray is None:
        report = store.index(
            texts, metadata, ids=ids, cleanup=args.cleanup, progress=shows_progress(args)
        )
        done = [report.added, report.updated, report.skipped, report.deleted]
    else:
        done = [encode_on_ray(ray, on_ray, args.model, store, texts, metadata)]
        done += [[], [], []]  # added, without the identities that would skip or replace
    counts = ", ".join(f"{what} {len(which)}" for what, which in zip(_OUTCOMES, done, strict=True))
    summary(f"{args.store}: {counts}; {len(store)} documents, {store.num_tokens:,} model tokens")
    return 0
