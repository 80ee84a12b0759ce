"""The ``ilre`` command line.

``ilre compress --query Q [--budget N | --ratio R] [--json] [--model M] [FILE ...]`` reads the
files (each one document; standard input when none is given) and prints the compressed text,
or with ``--json`` one JSON object with the fields of `RecallResult`. Refusals print one
line on standard error and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ILReError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilre", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compress = commands.add_parser("compress", help="keep what a query needs from long text")
    compress.add_argument("files", nargs="*", type=Path, help="documents (default: stdin)")
    compress.add_argument("--query", "-q", required=True, help="the question")
    budget = compress.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=int, help="budget in reader-LLM tokens")
    budget.add_argument("--ratio", type=float, help="budget as a fraction of the input, in (0, 1]")
    compress.add_argument("--json", action="store_true", help="print the result as JSON")
    compress.add_argument("--model", help="Hugging Face id, local dir or .gguf (default: embedded)")
    compress.add_argument("--layer", type=int, help="retrieval layer (default: the model's)")
    compress.add_argument("--device", help="cpu, cuda, mps (default: cuda when available)")
    compress.add_argument(
        "--tokenizer", default="cl100k_base", help="tiktoken encoding counting the budget"
    )
    return parser


def _read_documents(files: Sequence[Path]) -> list[str | bytes]:
    if not files:
        return [sys.stdin.buffer.read()]
    documents: list[str | bytes] = []
    for path in files:
        try:
            documents.append(path.read_bytes())
        except OSError as error:
            raise ILReError(f"cannot read {path}: {error.strerror}") from error
    return documents


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _compress(args)
    except ILReError as error:
        print(f"ilre: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _compress(args: argparse.Namespace) -> int:
    from .engine import ILRe, resolve_budget

    documents = _read_documents(args.files)
    resolve_budget(1, args.budget, args.ratio)  # refuse a bad budget before loading a model
    engine = ILRe.from_pretrained(
        args.model, layer=args.layer, device=args.device, budget_tokenizer=args.tokenizer
    )
    result = engine.compress(documents, args.query, budget_tokens=args.budget, ratio=args.ratio)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(result.text)
        print(
            f"[ilre] {result.input_tokens} -> {result.output_tokens} tokens "
            f"({len(result.spans)} spans, budget {result.budget_tokens})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
