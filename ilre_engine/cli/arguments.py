"""Argument types: each turns one command-line string into a checked value, or raises
``argparse.ArgumentTypeError``, which the parser reports as one usage line."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

MIN_CALIBRATION_LENGTH = 256
"""The shortest context, in model tokens, ``ilre calibrate`` measures on."""


def text(value: str) -> str:
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


def count(value: str) -> int:
    """A token count such as ``4096``, ``4k`` or ``1.5k``; a whole number of tokens."""
    value = value.strip().lower()
    scale = 1000 if value.endswith("k") else 1
    try:
        number = float(value.removesuffix("k")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token count: {value!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number of tokens: {value!r}")
    return int(number)


def lengths(value: str) -> tuple[int, ...]:
    """Comma-separated context lengths (`count`), each at least `MIN_CALIBRATION_LENGTH`."""
    found = tuple(count(part) for part in value.split(","))
    short = [n for n in found if n < MIN_CALIBRATION_LENGTH]
    if short:
        raise argparse.ArgumentTypeError(
            f"lengths must be >= {MIN_CALIBRATION_LENGTH} tokens, got {short[0]}"
        )
    return found


def positive(value: str) -> int:
    """A whole number >= 1."""
    number = whole(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def whole(value: str) -> int:
    """A whole number >= 0, such as a count of actors where 0 turns them off."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def fraction(value: str) -> float:
    """A non-negative number, such as a share of a GPU (0.5) or a count of them (2)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
    return number


def tolerance(value: str) -> float:
    """A share in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value!r}")
    return number


def layers(value: str) -> tuple[int, ...]:
    """Layers and ranges of layers, such as ``2-8`` or ``2,4,6-8``; none negative."""
    found: list[int] = []
    for part in value.split(","):
        first, _, last = part.partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a layer or range of layers: {part!r}") from None
        if not span or span.start < 0:
            raise argparse.ArgumentTypeError(f"not a layer or range of layers: {part!r}")
        found.extend(span)
    return tuple(found)


def profile_path(value: str) -> Path:
    """Where to write a profile: refused now, not after calibrating, when it is a directory."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory; name the profile file")
    return path
