"""``ilre query``: the parts of a corpus store's documents that a query needs."""

from __future__ import annotations

import argparse
import json

from .model import open_store
from .output import print_result, summary
from .parser import (
    add_command,
    add_device,
    add_model,
    add_query_and_budget,
    add_quiet,
    add_store,
    add_tokenizer,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "query",
        "keep what a query needs from a corpus store",
        "Print the parts of a store's documents that a query needs, within a budget.",
    )
    add_store(command, "the store's directory (from `ilre index`)")
    add_query_and_budget(command, "the store")
    command.add_argument(
        "--json", action="store_true", help="print the result as JSON, with each span's source"
    )
    add_tokenizer(command)
    add_model(command)
    add_device(command)
    add_quiet(command)


def run(args: argparse.Namespace) -> int:
    from ..budget import resolve_budget
    from ..inputs import check_query

    check_query(args.query)
    resolve_budget(1, args.budget, args.ratio)
    store = open_store(args, budget_tokenizer=args.tokenizer)
    result = store.recall(args.query, budget_tokens=args.budget, ratio=args.ratio)
    if args.json:
        data = result.to_dict()
        for span in data["spans"]:
            span["source"] = store.document(span["document"])[1].get("source")
        print_result(json.dumps(data, ensure_ascii=False))
    else:
        print_result(result.text)
        summary(
            f"{result.input_tokens} -> {result.output_tokens} tokens "
            f"({len(result.spans)} spans from {len({s.document for s in result.spans})} "
            f"of {len(store)} documents, budget {result.budget_tokens})"
        )
    return 0
