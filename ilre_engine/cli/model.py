"""Loading the engine at the command line: after `preflight`, with what transformers, gguf
and the file system raise on a model that cannot be loaded turned into one error line."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ILReError, UnsupportedModelError
from .output import note, one_line
from .parser import EMBEDDED


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
