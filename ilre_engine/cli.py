"""The ``ilre`` command line.

``ilre compress --query Q [--budget N | --ratio R] [--json] [--model M] [FILE ...]`` reads the
files (each one document; standard input when none is given) and prints the compressed text,
or with ``--json`` one JSON object with the fields of `RecallResult`.

``ilre calibrate [--model M] [--lengths 4k,8k] [--samples N] [--out profile.json]``
measures every layer's recall and writes the model's profile where `ILRe.from_pretrained`
finds it (`ilre_engine.calibration`).

Refusals print one line on standard error and exit with status 2; no traceback.
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
    compress.add_argument(
        "--max-tokens",
        type=int,
        help="longest context in model tokens (default: the model's max_position_embeddings)",
    )
    calibrate = commands.add_parser(
        "calibrate", help="choose the retrieval layer and pooling kernels of a model"
    )
    calibrate.add_argument(
        "--model", help="Hugging Face id, local dir or .gguf (default: embedded)"
    )
    calibrate.add_argument(
        "--lengths", default="4k,8k", help="context lengths in model tokens (e.g. 4k,8k,16k)"
    )
    calibrate.add_argument("--samples", type=int, default=2, help="tasks per family and length")
    calibrate.add_argument(
        "--families", help="task families (default: the RULER needle variants + paraphrase)"
    )
    calibrate.add_argument("--layers", help="candidate layers, e.g. 2-8 (default: all)")
    calibrate.add_argument("--tolerance", type=float, default=0.02, help="recall below the best")
    calibrate.add_argument("--device", help="cpu, cuda, mps (default: cuda when available)")
    calibrate.add_argument(
        "--out", type=Path, help="profile file (default: where from_pretrained finds it)"
    )
    return parser


def _count(text: str) -> int:
    text = text.strip().lower()
    scale = 1000 if text.endswith("k") else 1
    try:
        return int(float(text.rstrip("k")) * scale)
    except ValueError as error:
        raise ILReError(f"not a token count: {text!r}") from error


def _layers(text: str) -> tuple[int, ...]:
    layers: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            layers.extend(range(int(first), int(last or first) + 1))
        except ValueError as error:
            raise ILReError(f"not a layer or range of layers: {part!r}") from error
    return tuple(layers)


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
        return _calibrate(args) if args.command == "calibrate" else _compress(args)
    except ILReError as error:
        print(f"ilre: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _compress(args: argparse.Namespace) -> int:
    from .budget import resolve_budget
    from .config import ILReConfig
    from .engine import ILRe
    from .inputs import as_documents, check_query

    # Refuse bad input before paying for a model load.
    documents = as_documents(_read_documents(args.files))
    check_query(args.query)
    resolve_budget(1, args.budget, args.ratio)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ILReError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    engine = ILRe.from_pretrained(
        args.model,
        layer=args.layer,
        device=args.device,
        config=ILReConfig(max_tokens=args.max_tokens),
        budget_tokenizer=args.tokenizer,
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


def _calibrate(args: argparse.Namespace) -> int:
    from .calibration import CALIBRATION_FAMILIES, CalibrationSettings, calibrate
    from .loading import cache_root
    from .profiles import user_profile_path

    settings = CalibrationSettings(
        lengths=tuple(_count(x) for x in args.lengths.split(",")),
        samples=args.samples,
        families=tuple(args.families.split(",")) if args.families else CALIBRATION_FAMILIES,
        layers=_layers(args.layers) if args.layers else None,
        tolerance=args.tolerance,
    )
    profile = calibrate(args.model, settings, device=args.device)
    path = profile.save(args.out or user_profile_path(cache_root(), profile.model_name))
    kernels = ",".join(str(k) for k in profile.kernel_sizes)
    print(f"{'layer':>5}  best kernels  recall")
    for layer, detail in profile.details.items():
        mark = "  <- l_R" if int(layer) == profile.layer else ""
        recall = profile.recall[layer][detail["kernels"]]
        print(f"{layer:>5}  {detail['kernels']:<12}  {recall:.3f}{mark}")
    print(
        f"[ilre] {profile.model_name}: layer {profile.layer}, kernels {kernels} "
        f"({profile.seconds:.0f} s); profile written to {path}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
