"""What the command line writes: results to standard output, everything else to standard
error (summaries ``[ilre] ...``, warnings ``ilre: warning: ...``, progress on a terminal)."""

from __future__ import annotations

import argparse
import os
import sys


def print_result(text: str) -> None:
    """Write `text` to standard output ending with a newline, and flush it, so a message on
    standard error comes after it, on a line of its own."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def summary(message: str) -> None:
    """The one line a command ends with on standard error, ``[ilre] message``."""
    print(f"[ilre] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A line ``ilre: warning: message`` on standard error: the command goes on."""
    print(f"ilre: warning: {message}", file=sys.stderr, flush=True)


def shows_progress(args: argparse.Namespace) -> bool:
    """Whether a long step shows its progress: on a terminal, unless ``--quiet``."""
    return not getattr(args, "quiet", False) and sys.stderr is not None and sys.stderr.isatty()


def note(args: argparse.Namespace, message: str) -> None:
    """``[ilre] message`` before a step that can take a while (a model load), where
    progress shows; so a terminal never sits silent."""
    if shows_progress(args):
        summary(message)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its lines joined), or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def discard_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (stdout replaced in-process)
        pass
