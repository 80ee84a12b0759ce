"""What the approximate prefilter keeps of exact recall, on real keys of the embedded model.

    python benchmarks/store_prefilter.py --tokens 1000000 --prefilter 256,16 1024,32 \
        --dir /tmp/ilre-prefilter

Random keys are a poor test of an inverted-file index (they have no clusters), so this
encodes real text: `--tokens` model tokens of the haystack essays in documents of about
`--document-tokens` each (random slices, so passages repeat across documents, at other
positions and in other contexts), `--needles` of them hiding a fact each as in
`store_needle.py` ("The vault code of <city> is <number>."). The store is kept in `--dir`
and reused by later runs. Each needle's question is recalled exactly and through each
`--prefilter` (k,nprobe[,lists]) setting, at `--budget` reader tokens; per setting it prints the
share of the exact recall's text kept (`prefilter.kept_share`), how many values each
recall kept, the median recall time, and the index's build time and memory; one JSON line.
`--float32` builds IVF-flat indexes; `--no-prior` recalls (both ways) without the prior.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

from store_latency import prefilter_from
from store_needle import CITIES

from ilre_engine import CorpusStore, ILRe
from ilre_engine.calibration.tasks import essays
from ilre_engine.prefilter import kept_share

CHARS_PER_TOKEN = 4.3
"""About how many characters of the essays make one model token (Gemma 3's tokenizer)."""


def build(root: Path, engine: ILRe, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Encode the store into `root`; each needle's (question, value)."""
    rng = random.Random(args.seed)
    text = essays()
    chars = int(args.document_tokens * CHARS_PER_TOKEN)
    count = max(args.needles, round(args.tokens / args.document_tokens))
    documents = []
    for _ in range(count):
        start = rng.randrange(0, len(text) - chars)
        body = text[start : start + chars]
        documents.append(body[body.index(" ") + 1 : body.rindex(" ")])
    needles = []
    for city, home in zip(CITIES, rng.sample(range(count), args.needles), strict=False):
        value = str(rng.randint(100_000, 999_999))
        body = documents[home]
        cut = body.index(" ", int(len(body) * rng.random() * 0.9)) + 1
        documents[home] = f"{body[:cut]}The vault code of {city} is {value}. {body[cut:]}"
        needles.append((f"What is the vault code of {city}?", value))
    store = CorpusStore.create(root / "store", engine)
    started = time.perf_counter()
    store.add(documents, progress=True)
    (root / "needles.json").write_text(json.dumps(needles))
    print(f"encoded {store.num_tokens} tokens in {time.perf_counter() - started:.0f} s")
    return needles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--document-tokens", type=int, default=8000)
    parser.add_argument("--needles", type=int, default=20)
    parser.add_argument("--prefilter", nargs="+", default=["256,16", "1024,32"])
    parser.add_argument("--float32", action="store_true", help="IVF-flat index, not float16")
    parser.add_argument("--no-prior", action="store_true", help="recall without the prior")
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ilre-prefilter"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = ILRe.from_pretrained(device="cpu")
    if args.no_prior:  # the embedded profile's settings, the prior left out
        config = dataclasses.replace(engine.config, prior_query=None)
        engine = ILRe.from_pretrained(device="cpu", config=config)
    if (args.dir / "needles.json").exists():
        needles = [tuple(n) for n in json.loads((args.dir / "needles.json").read_text())]
    else:
        needles = build(args.dir, engine, args)
    store = CorpusStore.open(args.dir / "store", engine)
    store.recall(needles[0][0], budget_tokens=args.budget)  # reads the shards, the prior
    exact, exact_s = [], []
    for question, _ in needles:
        started = time.perf_counter()
        exact.append(store.recall(question, budget_tokens=args.budget))
        exact_s.append(time.perf_counter() - started)
    summary = {
        "tokens": store.num_tokens,
        "documents": len(store),
        "budget": args.budget,
        "needles": len(needles),
        "exact": {
            "values_kept": sum(v in r.text for (_, v), r in zip(needles, exact, strict=True)),
            "median_recall_s": round(statistics.median(exact_s), 3),
        },
    }
    print(json.dumps(summary["exact"]), flush=True)
    for setting in args.prefilter:
        prefilter = prefilter_from(setting, float16=not args.float32)
        shards = [store._load(shard) for shard in store._shards]
        masks = [store._live_tokens(loaded) for loaded in shards]
        started = time.perf_counter()
        index = store._key_index([s.keys for s in shards], masks, prefilter)
        build_s = time.perf_counter() - started
        shares, kept, both, seconds = [], 0, 0, []
        for (question, value), reference in zip(needles, exact, strict=True):
            started = time.perf_counter()
            result = store.recall(question, budget_tokens=args.budget, prefilter=prefilter)
            seconds.append(time.perf_counter() - started)
            shares.append(kept_share(reference, result))
            kept += value in result.text
            both += value in result.text and value in reference.text
        row = {
            "k": prefilter.k,
            "nprobe": prefilter.nprobe,
            "lists": index.lists,
            "float16": prefilter.float16,
            "build_s": round(build_s, 1),
            "index_mib": round(index.nbytes / 2**20, 1),
            "share_kept_median": round(statistics.median(shares), 3),
            "share_kept_min": round(min(shares), 3),
            "values_kept": kept,
            "values_kept_of_exact": both,
            "median_recall_s": round(statistics.median(seconds), 3),
        }
        summary[setting] = row
        print(json.dumps(row), flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
