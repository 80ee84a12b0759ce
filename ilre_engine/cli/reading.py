"""The documents a command reads: files (each one document), the text files of a folder,
or standard input; bounded in size, decoded as UTF-8, each named by its path in errors."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import EmptyInputError, ILReError
from ..inputs import decode_document

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html")
"""The files `ilre index` takes from a directory."""

MAX_INPUT_BYTES = 256 * 2**20
"""The most bytes one command reads, all inputs together (far more than any model's context
holds); a larger input, such as ``/dev/zero``, is refused."""

STDIN = "<stdin>"
"""The source, and the store id, of a document read from standard input."""

_CHUNK = 2**20


@dataclass(frozen=True)
class Document:
    """One input document: its text, and where it came from (the path as given, or
    `STDIN`)."""

    source: str
    text: str

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


def expand(paths: Sequence[Path]) -> list[Path]:
    """`paths` with each directory replaced by its text files (`TEXT_SUFFIXES`, recursively,
    hidden ones skipped), in sorted order."""
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


def read_documents(files: Sequence[Path], command: str) -> list[Document]:
    """The files' texts, or standard input's when no file is named; `MAX_INPUT_BYTES` in all
    at most. A file that is not UTF-8 is refused by its path and byte offset; an input that
    holds only whitespace is refused when every input does (named, when it is one)."""
    if not files:
        data = _read_stdin(command)
        documents = [Document(STDIN, decode_document(data, "standard input"))]
    else:
        documents = []
        left = MAX_INPUT_BYTES
        for path in files:
            try:
                with path.open("rb") as file:
                    data = _read_bounded(file, left, str(path), command)
            except OSError as error:
                raise ILReError(f"cannot read {path}: {error.strerror or error}") from error
            documents.append(Document(str(path), decode_document(data, str(path))))
            left -= len(data)
    if all(d.is_empty for d in documents):
        what = "standard input" if not files else ", ".join(d.source for d in documents[:3])
        more = f" and {len(documents) - 3} more" if len(documents) > 3 else ""
        verb = "is" if len(documents) == 1 else "are all"
        raise EmptyInputError(f"{what}{more} {verb} empty (only whitespace)")
    return documents


def _read_stdin(command: str) -> bytes:
    if sys.stdin is None:
        raise ILReError("no input: name FILEs or pipe text into standard input")
    if sys.stdin.isatty():
        print(
            "ilre: reading the documents from standard input; end with Ctrl-D, "
            f"or name FILEs (ilre {command} --help)",
            file=sys.stderr,
        )
    return _read_bounded(sys.stdin.buffer, MAX_INPUT_BYTES, "standard input", command)


def _read_bounded(stream: BinaryIO, limit: int, name: str, command: str) -> bytes:
    """All of `stream`, read in chunks; `ILReError` once it holds more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(min(_CHUNK, limit - size + 1)):
        size += len(chunk)
        if size > limit:
            raise ILReError(
                f"the input is too large: {name} takes it past "
                f"{MAX_INPUT_BYTES // 2**20} MiB, the most ilre {command} reads"
            )
        chunks.append(chunk)
    return b"".join(chunks)
