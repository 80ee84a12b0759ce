"""``ilre index --ray``: the driver that has a Ray actor pool encode the documents
(`ilre_engine.distributed.encode_corpus`) and commits them to the store itself."""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ILReError
from .arguments import fraction, positive, whole
from .model import model_errors
from .output import one_line
from .preflight import parse_device, preflight


@dataclass(frozen=True)
class RayOptions:
    """The options of ``ilre index --ray``, checked."""

    address: str
    device: str
    actors: int
    tokenizer_actors: int
    gpus: float
    batch_size: int


def add_arguments(command: argparse.ArgumentParser) -> None:
    ray = command.add_argument_group(
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
        type=positive,
        metavar="N",
        help="engines encoding at once, one per GPU (default: 1)",
    )
    ray.add_argument(
        "--tokenizer-actors",
        type=whole,
        metavar="N",
        help="CPU actors tokenising batches ahead of the engines, so that the engines' "
        "devices do not wait for it; 0: each engine tokenises its own batches (default: 1, "
        "reserving 1 CPU)",
    )
    ray.add_argument(
        "--gpus-per-actor",
        type=fraction,
        metavar="G",
        help="GPUs each actor reserves (default: 0; give 1 with --device cuda)",
    )
    ray.add_argument(
        "--batch-size",
        type=positive,
        metavar="N",
        help="documents per batch and shard (default: 128)",
    )


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The options of ``ilre index --ray``, checked (None without ``--ray``); refuses them
    without ``--ray``. Only the device's name is checked, not whether this machine has it:
    the actors' machines do."""
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
        return None
    gpus = args.gpus_per_actor or 0.0
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    kind = parse_device(device).type
    if kind == "cuda" and gpus == 0:
        raise ILReError(
            f"--device {device} needs --gpus-per-actor > 0: Ray hides the GPUs from actors "
            "that reserve none"
        )
    if kind != "cuda" and gpus > 0:
        raise ILReError(f"--gpus-per-actor {gpus:g} reserves GPUs for actors on {device}")
    return RayOptions(
        address=args.ray,
        device=device,
        actors=args.actors or 1,
        tokenizer_actors=1 if args.tokenizer_actors is None else args.tokenizer_actors,
        gpus=gpus,
        batch_size=args.batch_size or 128,
    )


def import_ray() -> Any:
    """The ``ray`` module, with Ray Data; `ILReError` saying how to install it."""
    try:
        import ray
        import ray.data  # the extra that encode_corpus needs
    except ImportError as error:
        raise ILReError(
            f'--ray needs Ray Data, which is not installed ({error}): pip install "ilre[ray]"'
        ) from None
    return ray


def driver_engine(model: str | None, actors_device: str) -> Any:
    """The engine that only creates, opens and commits the store, on the CPU, in the dtype
    the actors are then given (the store's fingerprint is taken from the weights as loaded):
    bfloat16 for CUDA actors, as `ILRe.from_pretrained` loads on CUDA, else this CPU's
    default, as ``ilre index`` here would load."""
    import torch

    from ..engine import ILRe

    preflight(model, None)  # the device is the actors', not this machine's
    dtype = torch.bfloat16 if parse_device(actors_device).type == "cuda" else None
    with model_errors(model):
        return ILRe.from_pretrained(model, device="cpu", dtype=dtype)


def encode_on_ray(
    ray: Any,
    options: RayOptions,
    model: str | None,
    store: Any,
    documents: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
) -> list[int]:
    """Encode `documents` into `store` on the Ray cluster of `options`, as `CorpusStore.add`
    would (the same metadata), in batches; their ids. A run that fails leaves the store as
    it was."""
    from ..distributed import encode_corpus
    from ..engine import ILRe

    if model is not None and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())  # the workers' cwd is not ours
    factory = functools.partial(
        ILRe.from_pretrained, model, device=options.device, dtype=store.engine.model.dtype
    )
    try:
        ray.init(
            address=options.address,
            logging_level=logging.WARNING,
            include_dashboard=False if options.address == "local" else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ILReError(f"cannot reach a Ray cluster at {options.address!r}: {error}") from error
    try:
        rows = [{"text": text, **entry} for text, entry in zip(documents, metadata, strict=True)]
        # Ray Data cuts batches at block borders: one block per batch keeps them whole (2,000
        # documents in batches of 128 made 31 shards with Ray's default blocks, 16 this way).
        blocks = -(-len(rows) // options.batch_size)
        return encode_corpus(
            ray.data.from_items(rows, override_num_blocks=blocks),
            store,
            factory,
            batch_size=options.batch_size,
            num_actors=options.actors,
            num_gpus_per_actor=options.gpus,
            tokenizer_actors=options.tokenizer_actors,
            metadata_columns=list(metadata[0]),
        )
    except ray.exceptions.RayError as error:
        cause = getattr(error, "cause", None)  # a worker's exception (RayTaskError)
        if isinstance(cause, ILReError):
            raise cause from error
        why = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else error
        raise ILReError(
            f"the Ray run failed; the store is as it was: {one_line(why)[:1000]}"
        ) from error
    finally:
        ray.shutdown()
