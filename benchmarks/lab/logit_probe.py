"""Ranks of the answer under raw attention logits instead of the engine's probabilities.

    python benchmarks/lab/logit_probe.py --length 16000 --families essay_qa,prose_qa

For each task of `quality.py` (same seeds), one JSON line: the rank (0 = best) of the
answer's best token under the engine's `token_scores`, and under the mean of the scaled
logits ``q·k`` over heads and query tokens less that mean under the prior question (``raw``;
``z``: each query row z-scored over the keys first), averaged over windows of 1, 9 and 31
tokens. docs/lab-notes.md, "Raw logits instead of attention probabilities".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from quality import answer_ranks, iter_tasks

from ilre_engine import ILRe
from ilre_engine.recall import grouped_logits


def logit_means(engine: ILRe, encoded, text: str) -> tuple[np.ndarray, np.ndarray]:
    """``(L,)`` mean scaled logit of each key over heads and query tokens: raw, z-scored."""
    ids, lead_in = engine.query_ids(text)
    queries, scaling = engine.query_states(encoded, ids)
    queries = queries[:, min(lead_in, len(ids) - 1) :]
    heads, length, dim = queries.shape
    kv_heads = encoded.keys.shape[0]
    grouped = queries.reshape(kv_heads, heads // kv_heads * length, dim)
    logits = grouped_logits(grouped, encoded.keys, scaling)  # (kv_heads, L, rows)
    z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True)
    return logits.mean((0, 2)).numpy(), z.mean((0, 2)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16000)
    parser.add_argument("--families", default="essay_qa,prose_qa")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = ILRe.from_pretrained(device="cpu")
    families = args.families.split(",")
    tasks = iter_tasks(engine.tokenizer, [args.length], families, args.samples, args.seed)
    with torch.inference_mode():
        for _, family, sample, task in tasks:
            encoded = engine.encode(task.context)
            row = {"family": family, "sample": sample}
            row["shipped"] = answer_ranks(encoded, task, engine.token_scores(encoded, task.query))
            asked = logit_means(engine, encoded, task.query)
            prior = logit_means(engine, encoded, engine.config.prior_query)
            outside = encoded.tokens.doc_ids < 0
            for name, question, neutral in zip(("raw", "z"), asked, prior, strict=True):
                for window in (1, 9, 31):
                    smoothed = np.convolve(question - neutral, np.ones(window) / window, "same")
                    scores = np.where(outside, -np.inf, smoothed)
                    row[f"{name}{window}"] = answer_ranks(encoded, task, scores)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
