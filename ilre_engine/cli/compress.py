"""``ilre compress``: the parts of the documents that a query needs, within a budget."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import ILReError
from .model import load_engine
from .output import print_result, shows_progress, summary, warn
from .parser import (
    add_command,
    add_device,
    add_model,
    add_query_and_budget,
    add_quiet,
    add_tokenizer,
)
from .preflight import preflight
from .reading import MAX_INPUT_BYTES, read_documents


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "compress",
        "keep what a query needs from long text",
        "Print the parts of the documents that a query needs, within a budget.",
    )
    command.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help=f"documents, one per file (default: standard input); at most "
        f"{MAX_INPUT_BYTES // 2**20} MiB in all",
    )
    add_query_and_budget(command, "the input")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model(command)
    command.add_argument("--layer", type=int, help="retrieval layer (default: the model's)")
    add_device(command)
    add_tokenizer(command)
    command.add_argument(
        "--max-tokens",
        type=int,
        help="longest context in model tokens (default: no limit but memory)",
    )
    add_quiet(command)


def run(args: argparse.Namespace) -> int:
    from ..budget import resolve_budget
    from ..inputs import check_query

    # Refuse bad arguments, then bad input, before paying for a model load.
    check_query(args.query)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ILReError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    resolve_budget(1, args.budget, args.ratio)
    preflight(args.model, args.device)
    documents = read_documents(args.files, "compress")
    for document in documents:
        if document.is_empty:
            warn(f"{document.source} is empty (only whitespace); it adds nothing")
    engine = load_engine(
        args, layer=args.layer, device=args.device, budget_tokenizer=args.tokenizer
    )
    # The model's profile (its calibrated kernels) stays; only the guard changes.
    engine.config = dataclasses.replace(engine.config, max_tokens=args.max_tokens)
    engine.query_ids(args.query)  # a query over its limit is refused before the encode
    encoded = engine.encode([d.text for d in documents], progress=shows_progress(args))
    result = engine.recall(encoded, args.query, budget_tokens=args.budget, ratio=args.ratio)
    if args.json:
        print_result(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print_result(result.text)
        summary(
            f"{result.input_tokens} -> {result.output_tokens} tokens "
            f"({len(result.spans)} spans, budget {result.budget_tokens})"
        )
    return 0
