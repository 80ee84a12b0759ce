"""``ilre stats``: what a corpus store holds, read from its manifest without a model."""

from __future__ import annotations

import argparse
import json

from .output import print_result
from .parser import add_command, add_store
from .store_files import read_store_manifest


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "stats",
        "show what a corpus store holds",
        "Print a corpus store's model, layer, documents, shards and tokens (no model loads).",
    )
    add_store(command)
    command.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    manifest = read_store_manifest(args.store)
    shards = manifest["shards"]
    stored = sum(shard["documents"] for shard in shards)
    figures = {
        "store": str(args.store),
        "model": manifest["model_name"],
        "layer": manifest["layer"],
        "documents": stored - len(manifest["deleted"]),
        "deleted": len(manifest["deleted"]),
        "shards": len(shards),
        "model_tokens": sum(shard["tokens"] for shard in shards),
    }
    if args.json:
        print_result(json.dumps(figures, ensure_ascii=False))
    else:
        width = max(len(name) for name in figures)
        print_result("\n".join(f"{name:<{width}}  {value}" for name, value in figures.items()))
    return 0
