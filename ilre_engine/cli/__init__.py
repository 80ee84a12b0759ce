"""The ``ilre`` command line.

``ilre compress --query Q [--budget N | --ratio R] [--json] [--model M] [FILE ...]`` reads the
files (each one document; standard input when none is given) and prints the compressed text,
or with ``--json`` one JSON object with the fields of `RecallResult`.

``ilre index STORE [PATH ...] [--cleanup full]`` brings a corpus store
(`ilre_engine.store.CorpusStore`, created if needed) up to date with the files: new ones
added, changed ones replaced, unchanged ones skipped without an encode, with ``--cleanup
full`` the others deleted; with ``--ray ADDRESS`` encoded on a Ray actor pool. ``ilre query
STORE --query Q [--budget N | --ratio R] [--json]`` recalls from it; ``ilre list``, ``ilre
stats`` and ``ilre delete`` show and change what it holds.

``ilre calibrate [--model M] [--lengths 4k,8k] [--samples N] [--out profile.json]``
measures every layer's recall and writes the model's profile where `ILRe.from_pretrained`
finds it (`ilre_engine.calibration`).

Refusals, usage errors included, print one line ``ilre: error: ...`` on standard error and
exit with status 2; no traceback. Checks that need no model (arguments, input, the store's
directory, a model file, a device, a hub id offline) run before any model loads. Help and
usage errors answer without importing torch: the modules of this package import only the
standard library and the engine's light modules at the top, the rest when a command runs.
Long steps show progress on standard error when it is a terminal, unless ``--quiet``. When
standard output is closed early (``ilre compress ... | head``) the command stops quietly
with status 141, as ``cat`` does.

One module per command (its arguments and its run), `parser` for what they share,
`preflight` for the checks before a model loads, `ray_driver` for ``ilre index --ray``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import ILReError
from . import calibrate, compress, delete, index, listing, query, stats
from .output import discard_stdout, one_line
from .parser import EXIT_USAGE, top_parser

EXIT_BROKEN_PIPE = 128 + 13  # killed by SIGPIPE, as a shell reports it
EXIT_INTERRUPTED = 130

_COMMANDS = {
    "compress": compress,
    "index": index,
    "query": query,
    "list": listing,
    "stats": stats,
    "delete": delete,
    "calibrate": calibrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: ``sys.argv[1:]``); return the exit status.

    Usage errors and ``--help`` exit through `SystemExit`, as argparse does."""
    parser, commands = top_parser()
    for command in _COMMANDS.values():
        command.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command].run(args)
    except ILReError as error:
        print(f"ilre: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
