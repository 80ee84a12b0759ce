"""``ilre list``: a corpus store's live documents, each with its id, size and source."""

from __future__ import annotations

import argparse
import json

from .model import open_store
from .output import print_result
from .parser import add_command, add_device, add_model, add_quiet, add_store, add_tokenizer
from .store_files import live_document_ids, read_store_manifest


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "list",
        "list a corpus store's documents",
        "Print a corpus store's live documents: the id `ilre query --json` reports, the\n"
        "document's length in budget tokens, and its source (the id `ilre index` knows it\n"
        "by, its file's absolute path).",
    )
    add_store(command)
    command.add_argument("--json", action="store_true", help="print one JSON object a line")
    add_tokenizer(command)
    add_model(command)
    add_device(command)
    add_quiet(command)


def run(args: argparse.Namespace) -> int:
    ids = live_document_ids(read_store_manifest(args.store))
    store = open_store(args, budget_tokenizer=args.tokenizer)
    sources = {document: source for source, document in store.source_ids().items()}
    counter = store.engine.counter
    rows = []
    for document in ids:
        text, metadata = store.document(document)
        source = sources.get(document, metadata.get("source"))
        rows.append({"id": document, "tokens": counter.count(text), "source": source})
    if args.json:
        print_result("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) or "")
    else:
        lines = [f"{'id':>6}  {'tokens':>8}  source"]
        lines += [f"{row['id']:>6}  {row['tokens']:>8}  {row['source'] or '-'}" for row in rows]
        print_result("\n".join(lines))
    return 0
