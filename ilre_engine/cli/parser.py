"""The argument parser: usage errors in one line, help that shows the defaults, and the
options several commands share (each command adds its own, in its module)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from .arguments import text

EXIT_USAGE = 2

EMBEDDED = "gemma3-270m"  # loading.EMBEDDED_MODEL, named here so help does not import torch

DESCRIPTION = """\
Compress long contexts by in-model token recall: a causal LM reads the context up to one
intermediate layer, and the context tokens the question attends to most there are kept."""

EPILOG = """\
examples:
  ilre compress -q "How long must the crew wait?" --budget 200 report.txt
  cat notes.md | ilre compress -q "Who signed?" --ratio 0.1 --json
  ilre index my-store docs/ && ilre query my-store -q "Who signed?" --budget 300
  ilre index my-store docs/ --cleanup full      # again later: only what changed
  ilre list my-store && ilre delete my-store docs/old.txt
  ilre calibrate --model Qwen/Qwen2.5-0.5B --lengths 4k,8k

Errors print one line "ilre: error: ..." and exit with status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, ``ilre: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ilre").strip()
        see = f"ilre {command} --help" if command else "ilre --help"
        self.exit(EXIT_USAGE, f"ilre: error: {message} (see '{see}')\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none; keeps the epilog's lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The ``ilre`` parser and the action its commands are added to."""
    parser = Parser(
        prog="ilre", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, commands


def add_command(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A command's parser: `summary` in ``ilre --help``, `description` in its own help."""
    return commands.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter
    )


def add_store(parser: argparse.ArgumentParser, help: str = "the store's directory") -> None:
    parser.add_argument("store", type=Path, metavar="STORE", help=help)


def add_query_and_budget(parser: argparse.ArgumentParser, of: str) -> None:
    """``--query`` and one of ``--budget`` / ``--ratio`` (a fraction of `of`)."""
    parser.add_argument("--query", "-q", required=True, type=text, help="the question")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=int, help="budget in reader-LLM tokens")
    budget.add_argument("--ratio", type=float, help=f"budget as a fraction of {of}, in (0, 1]")


def add_tokenizer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", default="cl100k_base", help="tiktoken encoding counting the budget"
    )


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help=f"Hugging Face id, local dir or .gguf (default: embedded {EMBEDDED})"
    )


def add_device(parser: argparse.ArgumentParser, more: str = "") -> None:
    parser.add_argument(
        "--device", help=f"cpu, cuda, cuda:N or mps (default: cuda when available){more}"
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (they show only on a terminal, on standard error)",
    )
