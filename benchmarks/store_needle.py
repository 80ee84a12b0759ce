"""A needle in one document among a thousand, against the same document alone.

    python benchmarks/store_needle.py --documents 1000 --needles 20

A corpus store of `--documents` essay passages (about 100 model tokens each) hides
`--needles` facts, each in its own document at a random depth, each with its own key
("the vault code of <city> is <number>"). Every question is asked three times, through the
store's own recall with the embedded model:

- ``single``: over a copy of the store in which the other needles' documents are deleted:
  one needle among the plain passages (`--budget` reader tokens);
- ``distracted``: over the whole store, the other needles (same sentence, other cities and
  numbers) competing with it;
- ``alone``: over a store of the needle's document only (`--alone-budget` tokens).

Prints, per setting, how many values were kept whole and the rank of the needle's document
by its best token; one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from ilre_engine import CorpusStore, ILRe
from ilre_engine.calibration.tasks import essays

CITIES = [
    "Quito",
    "Lagos",
    "Oslo",
    "Lima",
    "Hanoi",
    "Perth",
    "Accra",
    "Riga",
    "Tunis",
    "Sofia",
    "Kyiv",
    "Dakar",
    "Baku",
    "Minsk",
    "Muscat",
    "Quebec",
    "Nairobi",
    "Bergen",
    "Cusco",
    "Porto",
    "Malmo",
    "Split",
    "Tartu",
    "Gdansk",
    "Leeds",
    "Graz",
    "Lyon",
    "Turin",
    "Cork",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--needles", type=int, default=20)
    parser.add_argument("--chars", type=int, default=450, help="characters a passage")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--alone-budget", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    text = essays()
    starts = rng.sample(range(0, len(text) - args.chars), args.documents)
    passages = [text[s : s + args.chars] for s in starts]
    # Cut at spaces so that no passage starts or ends inside a word.
    passages = [p[p.index(" ") + 1 : p.rindex(" ")] for p in passages]
    homes = rng.sample(range(args.documents), args.needles)
    needles = []
    for city, home in zip(CITIES, homes, strict=False):
        value = str(rng.randint(100_000, 999_999))
        body = passages[home]
        cut = body.index(" ", int(len(body) * rng.random() * 0.9)) + 1
        passages[home] = f"{body[:cut]}The vault code of {city} is {value}. {body[cut:]}"
        needles.append((home, f"What is the vault code of {city}?", value))

    engine = ILRe.from_pretrained(device="cpu")
    root = Path(tempfile.mkdtemp(prefix="ilre-needle-"))
    crowded = CorpusStore.create(root / "crowded", engine)
    started = time.perf_counter()
    crowded.add(passages, progress=True)
    encode_s = time.perf_counter() - started
    results = {"single": [], "distracted": [], "alone": []}
    for home, question, value in needles:
        alone = CorpusStore.create(root / f"alone-{home}", engine)
        alone.add([passages[home]])
        shutil.copytree(crowded.directory, root / "single", dirs_exist_ok=False)
        single = CorpusStore.open(root / "single", engine)
        single.delete([other for other, _, _ in needles if other != home])
        for name, store, budget in (
            ("single", single, args.budget),
            ("distracted", crowded, args.budget),
            ("alone", alone, args.alone_budget),
        ):
            started = time.perf_counter()
            result = store.recall(question, budget_tokens=budget)
            seconds = time.perf_counter() - started
            best = {d: s.max() for d, s in store.token_scores(question).items()}
            target = 0 if name == "alone" else home
            rank = 1 + int(sum(score > best[target] for score in best.values()))
            results[name].append({"kept": value in result.text, "rank": rank, "s": seconds})
        shutil.rmtree(root / "single")
    summary = {
        "documents": args.documents,
        "model_tokens": crowded.num_tokens,
        "needles": len(needles),
        "encode_s": round(encode_s, 1),
    }
    for name, rows in results.items():
        kept = sum(r["kept"] for r in rows)
        ranks = sorted(r["rank"] for r in rows)
        seconds = sorted(r["s"] for r in rows)[len(rows) // 2]
        print(
            f"{name}: value kept {kept}/{len(rows)}, document ranks {ranks}, median {seconds:.2f} s"
        )
        summary[name] = {"kept": kept, "ranks": ranks, "median_recall_s": round(seconds, 3)}
    summary["budgets"] = {"store": args.budget, "alone": args.alone_budget}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
