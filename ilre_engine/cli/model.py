"""Loading the engine at the command line, and opening a store with it: after the checks
that need no model, with what transformers, gguf and the file system raise on a model that
cannot be loaded turned into one error line."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ILReError, UnsupportedModelError
from .output import note, one_line
from .parser import EMBEDDED
from .preflight import preflight
from .store_files import read_store_manifest


@contextmanager
def model_errors(
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
        name = model or EMBEDDED
        raise UnsupportedModelError(f"cannot load the model {name}: {one_line(error)}") from error


def load_engine(args: argparse.Namespace, **settings: Any) -> Any:
    """`ILRe.from_pretrained(args.model, **settings)`, said on a terminal before it starts
    (a first load converts the model, a minute or more)."""
    from ..engine import ILRe

    note(args, f"loading {args.model or EMBEDDED} ...")
    with model_errors(args.model):
        return ILRe.from_pretrained(args.model, **settings)


def open_store(args: argparse.Namespace, **settings: Any) -> Any:
    """The `CorpusStore` at ``args.store``, opened with ``args.model`` on ``args.device``
    (`settings`: more of `ILRe.from_pretrained`'s); a path that holds no store, or a damaged
    one, is refused before the model loads."""
    read_store_manifest(args.store)
    preflight(args.model, args.device)
    engine = load_engine(args, device=args.device, **settings)
    from ..store import CorpusStore

    return CorpusStore.open(args.store, engine)
