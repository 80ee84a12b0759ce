"""``ilre delete``: delete documents from a corpus store, by id or by source."""

from __future__ import annotations

import argparse
import os

from ..errors import ILReError
from .model import open_store
from .output import summary
from .parser import add_command, add_device, add_model, add_quiet, add_store
from .store_files import live_document_ids, read_store_manifest


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "delete",
        "delete documents from a corpus store",
        "Delete documents from a corpus store, named by the id `ilre list` shows or by\n"
        "their source (a file's path, as `ilre index` was given it or absolute). Nothing\n"
        "is deleted unless every one is found.",
    )
    add_store(command)
    command.add_argument(
        "documents", nargs="+", metavar="ID|SOURCE", help="document ids or sources"
    )
    add_model(command)
    add_device(command)
    add_quiet(command)


def run(args: argparse.Namespace) -> int:
    live = set(live_document_ids(read_store_manifest(args.store)))
    store = open_store(args)
    sources = store.source_ids()
    chosen: set[int] = set()
    for name in args.documents:
        source = name if name in sources else os.path.abspath(name)
        if name.isdigit() and int(name) in live:
            chosen.add(int(name))
        elif source in sources:
            chosen.add(sources[source])
        else:
            raise ILReError(f"no live document {name!r} in {args.store} (see `ilre list`)")
    store.delete(sorted(chosen))
    summary(f"{args.store}: deleted {len(chosen)}; {len(store)} documents")
    return 0
