"""Readable output on hard-wrapped text: how many recalled spans start and end on a sentence
boundary, and how many answers are kept, on essays wrapped at 70 columns.

Plain text is often hard-wrapped (e-mail, plain-text essays, READMEs); a line break inside a
paragraph is no boundary, and a span that starts or stops at one reads as a fragment. Each
task is a question over the essays (``prose_qa``, ``essay_qa``) with the essays' paragraphs
wrapped by `textwrap.fill`; ILRe recalls at each ratio with its attention alone
(``hybrid=None``, so the units are what changes between versions of the engine).

A span's start is on a boundary when it opens a document or a paragraph or follows terminal
punctuation (and closing quotes or brackets); its end when it closes one or ends on terminal
punctuation. Run it once per version of the engine (``PYTHONPATH`` at the other checkout)::

    python benchmarks/wrapped_spans.py --samples 10 --out /tmp/wrapped.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import textwrap
import time
from pathlib import Path

from ilre_engine import ILRe
from ilre_engine.calibration.families import ALL_FAMILIES
from ilre_engine.calibration.tasks import haystack

_ENDS_SENTENCE = re.compile(r"[.!?…][\"'”’)\]]*$")
FAMILIES = ("prose_qa", "essay_qa")


def wrap(text: str, width: int = 70) -> str:
    """`text` with each paragraph (blank-line separated) hard-wrapped at `width` columns."""
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in paragraphs)


def on_boundaries(document: str, start: int, end: int) -> tuple[bool, bool]:
    """Whether ``document[start:end]`` starts and ends on a sentence boundary."""
    before = document[:start].rstrip(" \t")
    opens = not before.strip() or before.endswith("\n\n") or bool(_ENDS_SENTENCE.search(before))
    after = document[end:].lstrip(" \t")
    closes = (
        not after.strip()
        or after.startswith("\n\n")
        or bool(_ENDS_SENTENCE.search(document[start:end]))
    )
    return opens, closes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=4000, help="model tokens of essays")
    parser.add_argument("--samples", type=int, default=10, help="per family")
    parser.add_argument("--ratios", default="0.05,0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    engine = ILRe.from_pretrained()
    engine.hybrid = None
    text = wrap(haystack(engine.tokenizer, args.length))
    ratios = [float(r) for r in args.ratios.split(",")]
    counts = {
        r: {"spans": 0, "both": 0, "opens": 0, "closes": 0, "answers": 0, "kept": 0} for r in ratios
    }
    started = time.perf_counter()
    for family in FAMILIES:
        rng = random.Random(args.seed)
        for sample in range(args.samples):
            task = ALL_FAMILIES[family](text, (sample + 0.5) / args.samples, rng)
            encoded = engine.encode(task.context, progress=False)
            for ratio in ratios:
                result = engine.recall(encoded, task.query, ratio=ratio)
                row = counts[ratio]
                for span in result.spans:
                    opens, closes = on_boundaries(task.context, span.start, span.end)
                    row["spans"] += 1
                    row["opens"] += opens
                    row["closes"] += closes
                    row["both"] += opens and closes
                row["answers"] += len(task.answers)
                row["kept"] += sum(answer in result.text for answer in task.answers)
    report = {
        "engine": ILRe.__module__,
        "length": args.length,
        "samples": args.samples,
        "families": list(FAMILIES),
        "seconds": round(time.perf_counter() - started, 1),
        "by_ratio": {
            str(r): {**row, "share_on_boundaries": round(row["both"] / max(row["spans"], 1), 3)}
            for r, row in counts.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["by_ratio"], indent=1))


if __name__ == "__main__":
    main()
