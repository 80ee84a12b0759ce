"""The ``ilre`` command line.

``ilre compress --query Q [--budget N | --ratio R] [--json] [--model M] [FILE ...]`` reads the
files (each one document; standard input when none is given) and prints the compressed text,
or with ``--json`` one JSON object with the fields of `RecallResult`.

``ilre index STORE [FILE ...]`` encodes the files (each one document) into a corpus store
(`ilre_engine.store.CorpusStore`, created if needed), with ``--ray ADDRESS`` on a Ray actor
pool (`ilre_engine.distributed.encode_corpus`); ``ilre query STORE --query Q [--budget N |
--ratio R] [--json]`` recalls from it.

``ilre calibrate [--model M] [--lengths 4k,8k] [--samples N] [--out profile.json]``
measures every layer's recall and writes the model's profile where `ILRe.from_pretrained`
finds it (`ilre_engine.calibration`).

Refusals, usage errors included, print one line ``ilre: error: ...`` on standard error and
exit with status 2; no traceback. Help and usage errors answer without importing torch: this
module imports only the standard library and `ilre_engine.errors` at the top, the rest when a
command runs. Inputs larger than `MAX_INPUT_BYTES` in all are refused. A Hugging Face id that
is not cached is refused at once when the hub is unreachable or ``HF_HUB_OFFLINE`` is set.
When standard output is closed early (``ilre compress ... | head``) the command stops quietly
with status 141, as ``cat`` does.

Longer than the other modules because a command line answers every mistake at once and in
one line: argument checks, offline checks of a hub id, bounded input, broken pipes; the work
itself is the engine's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NoReturn
from urllib.parse import urlsplit

from .errors import ILReError, UnsupportedModelError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html")
"""The files `ilre index` takes from a directory."""
MAX_INPUT_BYTES = 256 * 2**20
"""The most bytes ``ilre compress`` reads, all inputs together (far more than any model's
context holds); a larger input, such as ``/dev/zero``, is refused."""

MIN_CALIBRATION_LENGTH = 256
"""The shortest context, in model tokens, ``ilre calibrate`` measures on."""

HUB_TIMEOUT_S = 5
"""Seconds a request to the Hugging Face hub may wait (``HF_HUB_ETAG_TIMEOUT`` and
``HF_HUB_DOWNLOAD_TIMEOUT``, unless set)."""

HUB_PROBE_TIMEOUT_S = 3
"""At most how long finding out whether the hub answers takes (name lookup and connect)."""

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # killed by SIGPIPE, as a shell reports it
EXIT_INTERRUPTED = 130

_EMBEDDED = "gemma3-270m"  # loading.EMBEDDED_MODEL, named here so help does not import torch
_CHUNK = 2**20
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

_DESCRIPTION = """\
Compress long contexts by in-model token recall: a causal LM reads the context up to one
intermediate layer, and the context tokens the question attends to most there are kept."""

_EPILOG = """\
examples:
  ilre compress -q "How long must the crew wait?" --budget 200 report.txt
  cat notes.md | ilre compress -q "Who signed?" --ratio 0.1 --json
  ilre index my-store docs/*.txt && ilre query my-store -q "Who signed?" --budget 300
  ilre calibrate --model Qwen/Qwen2.5-0.5B --lengths 4k,8k

Errors print one line "ilre: error: ..." and exit with status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, ``ilre: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ilre").strip()
        see = f"ilre {command} --help" if command else "ilre --help"
        self.exit(EXIT_USAGE, f"ilre: error: {message} (see '{see}')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none; keeps the epilog's lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ilre",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compress = commands.add_parser(
        "compress",
        help="keep what a query needs from long text",
        description="Print the parts of the documents that a query needs, within a budget.",
        formatter_class=_HelpFormatter,
    )
    compress.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help=f"documents, one per file (default: standard input); at most "
        f"{MAX_INPUT_BYTES // 2**20} MiB in all",
    )
    compress.add_argument("--query", "-q", required=True, type=_text, help="the question")
    budget = compress.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=int, help="budget in reader-LLM tokens")
    budget.add_argument("--ratio", type=float, help="budget as a fraction of the input, in (0, 1]")
    compress.add_argument("--json", action="store_true", help="print the result as JSON")
    compress.add_argument(
        "--model", help=f"Hugging Face id, local dir or .gguf (default: embedded {_EMBEDDED})"
    )
    compress.add_argument("--layer", type=int, help="retrieval layer (default: the model's)")
    compress.add_argument(
        "--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    compress.add_argument(
        "--tokenizer", default="cl100k_base", help="tiktoken encoding counting the budget"
    )
    compress.add_argument(
        "--max-tokens",
        type=int,
        help="longest context in model tokens (default: no limit but memory)",
    )
    index = commands.add_parser(
        "index",
        help="add documents to a corpus store on disk",
        description="Encode documents, one per file, into a corpus store (created if needed),\n"
        "each file's path kept as its metadata 'source'. `ilre query` recalls from it.",
        formatter_class=_HelpFormatter,
    )
    index.add_argument("store", type=Path, help="the store's directory")
    index.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="PATH",
        help=f"documents, one per file; a directory adds its files ({', '.join(TEXT_SUFFIXES)}, "
        f"recursively, hidden ones skipped); default: standard input; at most "
        f"{MAX_INPUT_BYTES // 2**20} MiB in all per call",
    )
    ray = index.add_argument_group(
        'encoding on a Ray cluster (pip install "ilre[ray]"; docs/DISTRIBUTED.md)'
    )
    ray.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="encode on the Ray cluster at ADDRESS (ray.init's: auto, ray://head:10001, or "
        "local to start one here); the store must lie where every worker sees it, under the "
        "same path",
    )
    ray.add_argument(
        "--actors",
        type=_positive,
        metavar="N",
        help="engines encoding at once, one per GPU (default: 1)",
    )
    ray.add_argument(
        "--tokenizer-actors",
        type=_whole,
        metavar="N",
        help="CPU actors tokenising batches ahead of the engines, so that the engines' "
        "devices do not wait for it; 0: each engine tokenises its own batches (default: 1, "
        "reserving 1 CPU)",
    )
    ray.add_argument(
        "--gpus-per-actor",
        type=_fraction,
        metavar="G",
        help="GPUs each actor reserves (default: 0; give 1 with --device cuda)",
    )
    ray.add_argument(
        "--batch-size",
        type=_positive,
        metavar="N",
        help="documents per batch and shard (default: 128)",
    )
    query = commands.add_parser(
        "query",
        help="keep what a query needs from a corpus store",
        description="Print the parts of a store's documents that a query needs, within a budget.",
        formatter_class=_HelpFormatter,
    )
    query.add_argument("store", type=Path, help="the store's directory (from `ilre index`)")
    query.add_argument("--query", "-q", required=True, type=_text, help="the question")
    store_budget = query.add_mutually_exclusive_group(required=True)
    store_budget.add_argument("--budget", type=int, help="budget in reader-LLM tokens")
    store_budget.add_argument(
        "--ratio", type=float, help="budget as a fraction of the store, in (0, 1]"
    )
    query.add_argument(
        "--json", action="store_true", help="print the result as JSON, with each span's source"
    )
    for command in (index, query):
        command.add_argument(
            "--model", help=f"Hugging Face id, local dir or .gguf (default: embedded {_EMBEDDED})"
        )
        command.add_argument(
            "--device",
            help="cpu, cuda, cuda:N or mps (default: cuda when available)"
            + (
                "; with --ray the actors' (default: cuda with --gpus-per-actor, else cpu)"
                if command is index
                else ""
            ),
        )
    calibrate = commands.add_parser(
        "calibrate",
        help="choose the retrieval layer and pooling kernels of a model",
        description="Measure every layer's recall on retrieval tasks and write the model's\n"
        "profile, which ILRe.from_pretrained then uses.",
        formatter_class=_HelpFormatter,
    )
    calibrate.add_argument(
        "--model", help=f"Hugging Face id, local dir or .gguf (default: embedded {_EMBEDDED})"
    )
    calibrate.add_argument(
        "--lengths",
        default="4k,8k",
        type=_lengths,
        help=f"context lengths in model tokens, each >= {MIN_CALIBRATION_LENGTH} and within "
        "the model's positions (e.g. 4k,8k,16k)",
    )
    calibrate.add_argument(
        "--samples", type=_positive, default=2, help="tasks per family and length"
    )
    calibrate.add_argument(
        "--families", help="task families (default: the RULER needle variants + paraphrase)"
    )
    calibrate.add_argument(
        "--layers", type=_layers, help="candidate layers, e.g. 2-8 or 2,4,6 (default: all)"
    )
    calibrate.add_argument(
        "--tolerance",
        type=_tolerance,
        default=0.02,
        help="how far below the best recall the chosen layer may be, in [0, 1]",
    )
    calibrate.add_argument(
        "--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    calibrate.add_argument(
        "--out",
        type=_profile_path,
        help="profile file (default: where from_pretrained finds it)",
    )
    return parser


def _text(value: str) -> str:
    """An argument as text; bytes that were not UTF-8 (surrogate escapes) are refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        char = value[error.start]
        byte = f"byte 0x{ord(char) - 0xDC00:02x}" if "\udc80" <= char <= "\udcff" else repr(char)
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8 text ({byte} at character {error.start})"
        ) from None
    return value


def _count(text: str) -> int:
    """A token count such as ``4096``, ``4k`` or ``1.5k``; a whole number of tokens."""
    text = text.strip().lower()
    scale = 1000 if text.endswith("k") else 1
    try:
        value = float(text.removesuffix("k")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r}") from None
    if not math.isfinite(value) or not value.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number of tokens: {text!r}")
    return int(value)


def _lengths(text: str) -> tuple[int, ...]:
    """Comma-separated context lengths (`_count`), each at least `MIN_CALIBRATION_LENGTH`."""
    lengths = tuple(_count(part) for part in text.split(","))
    short = [n for n in lengths if n < MIN_CALIBRATION_LENGTH]
    if short:
        raise argparse.ArgumentTypeError(
            f"lengths must be >= {MIN_CALIBRATION_LENGTH} tokens, got {short[0]}"
        )
    return lengths


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _whole(text: str) -> int:
    """A whole number >= 0, such as a count of actors where 0 turns them off."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    """A non-negative number, such as a share of a GPU (0.5) or a count of them (2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def _layers(text: str) -> tuple[int, ...]:
    """Layers and ranges of layers, such as ``2-8`` or ``2,4,6-8``; none negative."""
    layers: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a layer or range of layers: {part!r}") from None
        if not span or span.start < 0:
            raise argparse.ArgumentTypeError(f"not a layer or range of layers: {part!r}")
        layers.extend(span)
    return tuple(layers)


def _profile_path(text: str) -> Path:
    """Where to write a profile: refused now, not after calibrating, when it is a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; name the profile file")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: ``sys.argv[1:]``); return the exit status.

    Usage errors and ``--help`` exit through `SystemExit`, as argparse does."""
    args = _parser().parse_args(argv)
    commands = {"calibrate": _calibrate, "compress": _compress, "index": _index, "query": _query}
    try:
        return commands[args.command](args)
    except ILReError as error:
        print(f"ilre: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (stdout replaced in-process)
        pass


def _compress(args: argparse.Namespace) -> int:
    from .inputs import as_documents, check_query

    # Refuse bad arguments, then bad input, before paying for a model load.
    check_query(args.query)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ILReError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    _check_gguf(args.model)
    hub = _prepare_hub(args.model)  # before anything imports huggingface_hub
    from .budget import resolve_budget

    resolve_budget(1, args.budget, args.ratio)
    _check_device(args.device)
    if hub is not None:
        _check_cached(args.model, hub)
    documents = as_documents(_read_documents(args.files))

    from .engine import ILRe

    with _loading(args.model):
        engine = ILRe.from_pretrained(
            args.model, layer=args.layer, device=args.device, budget_tokenizer=args.tokenizer
        )
    # The model's profile (its calibrated kernels) stays; only the guard changes.
    engine.config = dataclasses.replace(engine.config, max_tokens=args.max_tokens)
    result = engine.compress(documents, args.query, budget_tokens=args.budget, ratio=args.ratio)
    if args.json:
        _print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        _print(result.text)
        print(
            f"[ilre] {result.input_tokens} -> {result.output_tokens} tokens "
            f"({len(result.spans)} spans, budget {result.budget_tokens})",
            file=sys.stderr,
        )
    return 0


def _store_engine(args: argparse.Namespace, driver_for: str | None = None):
    """The engine of `ilre index` / `ilre query`, after the checks that need no model. With
    `driver_for` (``ilre index --ray``, whose actors encode on that device) it only creates,
    opens and commits the store: on the CPU, in the dtype the actors are then given (the
    store's fingerprint is taken from the weights as loaded): bfloat16 for CUDA actors, as
    `ILRe.from_pretrained` loads on CUDA, else this CPU's default, as ``ilre index`` here
    would load."""
    _check_gguf(args.model)
    hub = _prepare_hub(args.model)
    if driver_for is None:
        _check_device(args.device)
    if hub is not None:
        _check_cached(args.model, hub)
    from .engine import ILRe

    with _loading(args.model):
        if driver_for is not None:
            import torch

            cuda = _parse_device(driver_for).type == "cuda"
            dtype = torch.bfloat16 if cuda else None
            return ILRe.from_pretrained(args.model, device="cpu", dtype=dtype)
        return ILRe.from_pretrained(args.model, device=args.device)


def _index(args: argparse.Namespace) -> int:
    from .inputs import as_documents

    if args.store.exists() and not args.store.is_dir():
        raise ILReError(f"{args.store} is not a directory")
    ray_options = _ray_options(args)  # refused before reading input or loading a model
    files = _expand(args.files)
    documents = as_documents(_read_documents(files))
    sources = [str(path) for path in files] or ["<stdin>"]
    metadata = [{"source": source} for source in sources]
    if args.ray is None:
        engine = _store_engine(args)
    else:
        ray = _import_ray()
        engine = _store_engine(args, driver_for=ray_options["device"])
    from .store import MANIFEST, CorpusStore

    if (args.store / MANIFEST).exists():
        store = CorpusStore.open(args.store, engine)
    else:
        store = CorpusStore.create(args.store, engine)
    if args.ray is None:
        ids = store.add(documents, metadata)
    else:
        ids = _index_on_ray(ray, args, store, documents, metadata, **ray_options)
    print(
        f"[ilre] added documents {ids[0]}-{ids[-1]} to {args.store}: {len(store)} documents, "
        f"{store.num_tokens:,} model tokens",
        file=sys.stderr,
    )
    return 0


def _ray_options(args: argparse.Namespace) -> dict:
    """The options of ``ilre index --ray``, checked; refuses them without ``--ray``."""
    given = {
        "--actors": args.actors,
        "--tokenizer-actors": args.tokenizer_actors,
        "--gpus-per-actor": args.gpus_per_actor,
        "--batch-size": args.batch_size,
    }
    if args.ray is None:
        stray = next((name for name, value in given.items() if value is not None), None)
        if stray is not None:
            raise ILReError(f"{stray} needs --ray ADDRESS")
        return {}
    gpus = args.gpus_per_actor or 0.0
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    # Only the name is checked, not whether this machine has the device: the actors' do.
    kind = _parse_device(device).type
    if kind == "cuda" and gpus == 0:
        raise ILReError(
            f"--device {device} needs --gpus-per-actor > 0: Ray hides the GPUs from actors "
            "that reserve none"
        )
    if kind != "cuda" and gpus > 0:
        raise ILReError(f"--gpus-per-actor {gpus:g} reserves GPUs for actors on {device}")
    return {
        "device": device,
        "actors": args.actors or 1,
        "tokenizer_actors": 1 if args.tokenizer_actors is None else args.tokenizer_actors,
        "gpus": gpus,
        "batch_size": args.batch_size or 128,
    }


def _parse_device(name: str):
    """`name` as a ``torch.device``; refuses a name torch does not know."""
    import torch

    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise ILReError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None


def _import_ray():
    try:
        import ray
        import ray.data  # the extra that encode_corpus needs
    except ImportError as error:
        raise ILReError(
            f'--ray needs Ray Data, which is not installed ({error}): pip install "ilre[ray]"'
        ) from None
    return ray


def _index_on_ray(
    ray,
    args: argparse.Namespace,
    store,
    documents: Sequence[str],
    metadata: Sequence[dict],
    *,
    device: str,
    actors: int,
    tokenizer_actors: int,
    gpus: float,
    batch_size: int,
) -> list[int]:
    """Encode `documents` into `store` on the Ray cluster at ``args.ray``, as
    `CorpusStore.add` would (the same metadata), in batches of `batch_size`; their ids."""
    import functools
    import logging

    from .distributed import encode_corpus
    from .engine import ILRe

    model = args.model
    if model is not None and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())  # the workers' cwd is not ours
    factory = functools.partial(
        ILRe.from_pretrained, model, device=device, dtype=store.engine.model.dtype
    )
    try:
        ray.init(
            address=args.ray,
            logging_level=logging.WARNING,
            include_dashboard=False if args.ray == "local" else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ILReError(f"cannot reach a Ray cluster at {args.ray!r}: {error}") from error
    try:
        rows = [{"text": text, **entry} for text, entry in zip(documents, metadata, strict=True)]
        # Ray Data cuts batches at block borders: one block per batch keeps them whole (2,000
        # documents in batches of 128 made 31 shards with Ray's default blocks, 16 this way).
        blocks = -(-len(rows) // batch_size)
        return encode_corpus(
            ray.data.from_items(rows, override_num_blocks=blocks),
            store,
            factory,
            batch_size=batch_size,
            num_actors=actors,
            num_gpus_per_actor=gpus,
            tokenizer_actors=tokenizer_actors,
            metadata_columns=list(metadata[0]),
        )
    except ray.exceptions.RayError as error:
        cause = getattr(error, "cause", None)  # a worker's exception (RayTaskError)
        if isinstance(cause, ILReError):
            raise cause from error
        why = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else error
        raise ILReError(
            f"the Ray run failed; the store is as it was: {_one_line(why)[:1000]}"
        ) from error
    finally:
        ray.shutdown()


def _query(args: argparse.Namespace) -> int:
    from .budget import resolve_budget
    from .inputs import check_query

    check_query(args.query)
    resolve_budget(1, args.budget, args.ratio)
    from .store import MANIFEST, CorpusStore

    if not (args.store / MANIFEST).is_file():
        raise ILReError(f"no corpus store at {args.store}: build one with `ilre index`")
    store = CorpusStore.open(args.store, _store_engine(args))
    result = store.recall(args.query, budget_tokens=args.budget, ratio=args.ratio)
    if args.json:
        data = result.to_dict()
        for span in data["spans"]:
            span["source"] = store.document(span["document"])[1].get("source")
        _print(json.dumps(data, ensure_ascii=False))
    else:
        _print(result.text)
        print(
            f"[ilre] {result.input_tokens} -> {result.output_tokens} tokens "
            f"({len(result.spans)} spans from {len({s.document for s in result.spans})} "
            f"of {len(store)} documents, budget {result.budget_tokens})",
            file=sys.stderr,
        )
    return 0


def _print(text: str) -> None:
    """Write `text` to standard output ending with a newline, and flush it, so a message on
    standard error comes after it, on a line of its own."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _expand(paths: Sequence[Path]) -> list[Path]:
    """`paths` with each directory replaced by its text files, in sorted order."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in TEXT_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise ILReError(f"{path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        files.extend(found)
    return files


def _read_documents(files: Sequence[Path]) -> list[str | bytes]:
    """The files' bytes, or standard input's when no file is named; `MAX_INPUT_BYTES` in all
    at most."""
    if not files:
        if sys.stdin is None:
            raise ILReError("no input: name FILEs or pipe text into standard input")
        if sys.stdin.isatty():
            print(
                "ilre: reading the documents from standard input; end with Ctrl-D, "
                "or name FILEs (ilre compress --help)",
                file=sys.stderr,
            )
        return [_read_bounded(sys.stdin.buffer, MAX_INPUT_BYTES, "standard input")]
    documents: list[str | bytes] = []
    left = MAX_INPUT_BYTES
    for path in files:
        try:
            with path.open("rb") as file:
                data = _read_bounded(file, left, str(path))
        except OSError as error:
            raise ILReError(f"cannot read {path}: {error.strerror or error}") from error
        documents.append(data)
        left -= len(data)
    return documents


def _read_bounded(stream: BinaryIO, limit: int, name: str) -> bytes:
    """All of `stream`, read in chunks; `ILReError` once it holds more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(min(_CHUNK, limit - size + 1)):
        size += len(chunk)
        if size > limit:
            raise ILReError(
                f"the input is too large: {name} takes it past "
                f"{MAX_INPUT_BYTES // 2**20} MiB, the most ilre compress reads"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _check_device(name: str | None) -> None:
    """Refuse a device that torch does not know, or that this machine does not have."""
    if name is None:
        return
    import torch

    device = _parse_device(name)
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ILReError(f"device {name!r}: this torch is built without CUDA; use --device cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise ILReError(f"device {name!r}: no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ILReError(f"device {name!r}: there are {count} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ILReError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps") and not _backend_available(device.type):
        raise ILReError(f"device {name!r} is not available here")


def _backend_available(kind: str) -> bool:
    """Whether torch reports a device of this kind (``xpu``, ...) as available."""
    import torch

    return bool(getattr(getattr(torch, kind, None), "is_available", lambda: False)())


def _check_gguf(model: str | None) -> None:
    """Refuse a ``.gguf`` model file that does not start with the GGUF magic bytes, before
    the loader announces a conversion of it."""
    if model is None or Path(model).suffix != ".gguf":
        return
    try:
        with Path(model).expanduser().open("rb") as file:
            magic = file.read(4)
    except OSError:
        return  # missing or unreadable: the loader says which
    if magic != b"GGUF":
        raise UnsupportedModelError(
            f"{model} is not a GGUF file (no GGUF magic bytes at its start)"
        )


def _is_hub_id(model: str | None) -> bool:
    """Whether `model` names a Hugging Face repository rather than the embedded model, a
    ``.gguf`` file or a local path (as `ilre_engine.loading.resolve_model` decides)."""
    if model is None or model == _EMBEDDED:
        return False
    path = Path(model).expanduser()
    try:
        return path.suffix != ".gguf" and not path.exists()
    except OSError:  # a name too long for a path: let the loader say what is wrong
        return False


def _prepare_hub(model: str | None) -> str | None:
    """For a hub id, make hub requests give up after `HUB_TIMEOUT_S`, and go offline when the
    hub does not answer; returns why the hub is out of reach (None: it may be used, or
    `model` is no hub id). Sets environment variables, so it must run before
    ``huggingface_hub`` is imported."""
    if not _is_hub_id(model):
        return None
    for variable in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        os.environ.setdefault(variable, str(HUB_TIMEOUT_S))
    offline = next((v for v in _OFFLINE_VARIABLES if _is_true(os.environ.get(v))), None)
    if offline is not None:
        return f"{offline} is set"
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None  # the proxy decides; the request timeouts bound the wait
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if _reachable(endpoint, HUB_PROBE_TIMEOUT_S):
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"  # use the cache, without waiting on the network
    return f"{endpoint} is unreachable"


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds (name lookup
    included: it runs in a thread that is abandoned when it takes too long)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    opened = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            opened.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return opened.is_set()


def _check_cached(model: str, why_offline: str) -> None:
    """Refuse, at once, a hub id whose files are not in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except HFValidationError:
        raise UnsupportedModelError(
            f"{model!r} is no local path, .gguf file or Hugging Face model id"
        ) from None
    if not isinstance(cached, str):
        raise UnsupportedModelError(
            f"{model!r} is not a local path and not in the Hugging Face cache, and the hub "
            f"cannot be used ({why_offline})"
        )


@contextmanager
def _loading(
    model: str | None, errors: tuple[type[Exception], ...] = (OSError, ValueError)
) -> Iterator[None]:
    """Turn what transformers, gguf and the file system raise on a model that cannot be
    loaded (a damaged file, a directory without weights) into one `UnsupportedModelError`.
    Only `errors` are caught, and only around loading, so bugs elsewhere keep their traceback."""
    try:
        yield
    except ILReError:
        raise
    except errors as error:
        name = model or _EMBEDDED
        raise UnsupportedModelError(f"cannot load the model {name}: {_one_line(error)}") from error


def _calibrate(args: argparse.Namespace) -> int:
    _check_gguf(args.model)
    hub = _prepare_hub(args.model)
    from .calibration import CALIBRATION_FAMILIES, CalibrationSettings, calibrate
    from .loading import cache_root, load_config, resolve_model
    from .profiles import user_profile_path

    settings = CalibrationSettings(
        lengths=args.lengths,
        samples=args.samples,
        families=tuple(args.families.split(",")) if args.families else CALIBRATION_FAMILIES,
        layers=args.layers,
        tolerance=args.tolerance,
    )
    _check_device(args.device)
    if hub is not None:
        _check_cached(args.model, hub)
    with _loading(args.model):
        config = load_config(resolve_model(args.model))
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max(settings.lengths) > positions:
        raise ILReError(
            f"--lengths {max(settings.lengths)} is longer than the {positions} positions "
            f"{args.model or _EMBEDDED} was trained on"
        )
    # Only file errors here: the config loaded above, so what is left to fail is reading the
    # weights, and a ValueError from the calibration itself would be a bug.
    with _loading(args.model, (OSError,)):
        profile = calibrate(args.model, settings, device=args.device)
    path = args.out or user_profile_path(cache_root(), profile.model_name)
    try:
        path = profile.save(path)
    except OSError as error:
        raise ILReError(f"cannot write the profile to {path}: {error.strerror or error}") from error
    kernels = ",".join(str(k) for k in profile.kernel_sizes)
    print(f"{'layer':>5}  best kernels  recall")
    for layer, detail in profile.details.items():
        mark = "  <- l_R" if int(layer) == profile.layer else ""
        recall = profile.recall[layer][detail["kernels"]]
        print(f"{layer:>5}  {detail['kernels']:<12}  {recall:.3f}{mark}")
    sys.stdout.flush()
    print(
        f"[ilre] {profile.model_name}: layer {profile.layer}, kernels {kernels} "
        f"({profile.seconds:.0f} s); profile written to {path}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
