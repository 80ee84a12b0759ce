"""Choosing the retrieval layer offline (step 1 of the method): `calibrate`.

Retrieval tasks (needle-in-a-haystack variants from `ilre_engine.calibration.tasks`) are
built over real prose at several lengths. Each sample is read **once**, by a streaming prefill
up to the
deepest candidate layer that records the keys of every candidate layer on the way (and the
query's states at each of them), so the keys at layer ``l`` are exactly those an engine with
``l_R = l`` computes. Every layer then scores the context for the query, pools with every
candidate kernel set, and is measured by **answer recall**: the share of answers all of
whose words rank within the top ``budget x L`` tokens (a word enters a selection with its
best-scoring token, as the engine grows tokens to whole words), averaged over samples,
lengths and budgets.

The chosen layer is the shallowest whose recall (with its best kernels) is within
`tolerance` of the best layer's: the cost of an encode grows with the layer, and a deeper
layer that recalls about as well is not worth it. The kernels are the best at that layer,
each set of several kernels tried both dealt over heads and averaged over every head
(`ILReConfig.kernel_allocation`).
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..architectures import ModelDims
from ..config import ILReConfig
from ..context import TokenizedContext
from ..engine import ILRe
from ..errors import ILReError
from ..hybrid import Hybrid
from ..loading import load_config, resolve_model
from ..profiles import Profile, config_sha256
from ..recall import head_scores, pool_scores, remove_prior
from ..tokenization import tokenize_documents
from .families import ALL_FAMILIES
from .hybrid_search import HYBRID_WEIGHTS, calibrate_hybrid
from .metric import answer_recall, answer_words_of
from .tasks import RetrievalTask, haystack

CALIBRATION_FAMILIES = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "niah_paraphrase",
)
"""The four RULER needle variants, plus paraphrased needles: without them a shallow layer
that only matches the question's words would win on needles that repeat those words."""

KERNEL_CANDIDATES: tuple[tuple[int, ...], ...] = (
    (1,),
    (5,),
    (9,),
    (17,),
    (1, 5, 9, 17),
    (1, 3, 5, 9),
    (5, 9, 17, 33),
)


@dataclass(frozen=True)
class CalibrationSettings:
    """What `calibrate` measures.

    Attributes:
        lengths: context lengths in model tokens.
        samples: tasks per family and length (depths evenly spread).
        families: `ilre_engine.calibration.families.ALL_FAMILIES` names.
        budgets: shares of the context's tokens the answers must rank within.
        kernel_sets: candidate pooling kernels.
        layers: candidate layers (None: every layer of the model).
        tolerance: how far below the best recall (absolute) the chosen layer may be.
        seed: seeds the tasks.
    """

    lengths: tuple[int, ...] = (4000, 8000)
    samples: int = 2
    families: tuple[str, ...] = CALIBRATION_FAMILIES
    budgets: tuple[float, ...] = (0.01, 0.02, 0.05)
    kernel_sets: tuple[tuple[int, ...], ...] = KERNEL_CANDIDATES
    layers: tuple[int, ...] | None = None
    tolerance: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in ALL_FAMILIES]
        if unknown:
            raise ILReError(f"unknown task families {unknown}; known: {sorted(ALL_FAMILIES)}")
        if self.samples < 1 or not self.lengths or not self.budgets:
            raise ILReError("calibration needs at least one length, budget and sample")
        if any(not 0 < b <= 1 for b in self.budgets):
            raise ILReError(f"budgets must be in (0, 1], got {self.budgets}")


def calibrate(
    model: str | None = None,
    settings: CalibrationSettings | None = None,
    *,
    config: ILReConfig | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    hybrid_weights: Sequence[float] = HYBRID_WEIGHTS,
) -> Profile:
    """Measure every candidate layer's recall on `model` and choose `l_R` and the kernels,
    then the weight of the sentence-embedding prior at that layer (`calibrate_hybrid`).

    Args:
        model: as for `ILRe.from_pretrained` (None: the embedded model).
        settings: what to measure; defaults are documented on `CalibrationSettings`.
        config: the streaming settings to measure with (sink, window, chunk size).
        device: where to run (default: CUDA when available).
        cache_dir: the ILRe cache directory (converted models).
        progress: show a progress bar over samples.
        hybrid_weights: the prior's candidate weights; empty: not measured (weight 0).

    Returns:
        The profile; save it with `Profile.save` (``ilre calibrate`` writes it where
        `ILRe.from_pretrained` finds it).
    """
    settings = settings or CalibrationSettings()
    config = config or ILReConfig()
    started = time.perf_counter()
    source = resolve_model(model, cache_dir)
    full_config = load_config(source)
    num_layers = full_config.num_hidden_layers
    layers = tuple(sorted(set(settings.layers or range(num_layers))))
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ILReError(f"candidate layers must be within 0..{num_layers - 1}, got {layers}")
    engine = ILRe.from_pretrained(
        model,
        layer=layers[-1],
        device=device,
        config=config,
        cache_dir=cache_dir,
        profile=False,
    )
    candidates = pooling_candidates(settings.kernel_sets)
    # recall[layer][pooling] -> one value per (family, length, sample, budget)
    recall: dict[int, dict[Pooling, list[float]]] = {
        layer: {pooling: [] for pooling in candidates} for layer in layers
    }
    # by_group[layer][kernels]["family=..." / "length=..." / "budget=..."] -> values
    by_group: dict[int, dict[Pooling, dict[str, list[float]]]] = {
        layer: {pooling: {} for pooling in candidates} for layer in layers
    }
    rng = random.Random(settings.seed)
    jobs = [
        (length, family, (i + 0.5) / settings.samples)
        for length in settings.lengths
        for family in settings.families
        for i in range(settings.samples)
    ]
    texts = {length: haystack(engine.tokenizer, length) for length in settings.lengths}
    for length, family, depth in tqdm(jobs, desc="ILRe calibrate", disable=not progress):
        task = ALL_FAMILIES[family](texts[length], depth, rng)
        per_layer = _layer_recall(engine, task, layers, settings, candidates)
        for layer, per_kernels in per_layer.items():
            for kernels, per_budget in per_kernels.items():
                recall[layer][kernels].extend(per_budget)
                groups = by_group[layer][kernels]
                for budget, value in zip(settings.budgets, per_budget, strict=True):
                    for key in (f"family={family}", f"length={length}", f"budget={budget}"):
                        groups.setdefault(key, []).append(value)

    table = {
        str(layer): {_kernel_key(k): float(np.mean(v)) for k, v in per_kernels.items()}
        for layer, per_kernels in recall.items()
    }
    best_kernels = {
        layer: max(candidates, key=lambda k, layer=layer: table[str(layer)][_kernel_key(k)])
        for layer in layers
    }
    layer_recall = {layer: table[str(layer)][_kernel_key(best_kernels[layer])] for layer in layers}
    best = max(layer_recall.values())
    chosen = min(layer for layer in layers if layer_recall[layer] >= best - settings.tolerance)
    details = {
        str(layer): {
            "kernels": _kernel_key(best_kernels[layer]),
            **{
                key: float(np.mean(values))
                for key, values in sorted(by_group[layer][best_kernels[layer]].items())
            },
        }
        for layer in layers
    }
    hybrid = None
    if hybrid_weights:
        pooling = best_kernels[chosen]
        at_layer = ILRe.from_pretrained(
            model,
            layer=chosen,
            device=device,
            config=replace(config, kernel_sizes=pooling[0], kernel_allocation=pooling[1]),
            cache_dir=cache_dir,
            profile=False,
            hybrid=None,
        )
        hybrid = calibrate_hybrid(
            at_layer,
            lengths=settings.lengths,
            samples=settings.samples,
            budgets=settings.budgets,
            seed=settings.seed,
            weights=hybrid_weights,
            progress=progress,
        )
    from .. import __version__

    return Profile(
        model_name=source.name,
        config_sha256=config_sha256(full_config),
        layer=chosen,
        kernel_sizes=best_kernels[chosen][0],
        kernel_allocation=best_kernels[chosen][1],
        hybrid_weight=hybrid.weight if hybrid else 0.0,
        hybrid_passage_tokens=hybrid.passage_tokens if hybrid else Hybrid.chunk_tokens,
        hybrid_recall=hybrid.recall if hybrid else {},
        sink=config.sink,
        window=config.window,
        chunk_size=config.chunk_size,
        recall=table,
        details=details,
        settings={
            "lengths": list(settings.lengths),
            "samples": settings.samples,
            "families": list(settings.families),
            "budgets": list(settings.budgets),
            "kernel_sets": [_kernel_key(k) for k in candidates],
            "layers": list(layers),
            "tolerance": settings.tolerance,
            "seed": settings.seed,
            "metric": "share of answers whose every word ranks within the top budget x L tokens",
        },
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        ilre_version=__version__,
        seconds=round(time.perf_counter() - started, 1),
    )


Pooling = tuple[tuple[int, ...], str]
"""Kernel sizes and their allocation over heads (`ILReConfig.kernel_allocation`)."""


def pooling_candidates(kernel_sets: Sequence[tuple[int, ...]]) -> list[Pooling]:
    """Every kernel set dealt over heads, and each set of several kernels also averaged."""
    candidates: list[Pooling] = [(tuple(k), "heads") for k in kernel_sets]
    candidates += [(tuple(k), "average") for k in kernel_sets if len(k) > 1]
    return candidates


def _kernel_key(pooling: Pooling) -> str:
    kernels, allocation = pooling
    key = ",".join(str(k) for k in kernels)
    return key if allocation == "heads" else f"{key}@{allocation}"


class LayerRecorder:
    """A `StreamObserver` that keeps every observed layer's keys (context pass) and query
    states (query pass), preallocated for a context of `length` tokens."""

    def __init__(self, engine: ILRe, layers: Sequence[int], length: int) -> None:
        dims = ModelDims.from_config(engine.model.config)
        self.layers = frozenset(layers)
        self.keys = {
            layer: torch.empty(
                dims.kv_heads, length, dims.head_dim, dtype=engine.model.dtype, device=engine.device
            )
            for layer in self.layers
        }
        self.queries: dict[int, torch.Tensor] = {}

    def on_keys(self, layer: int, start: int, keys: torch.Tensor) -> None:
        self.keys[layer][:, start : start + keys.shape[1]] = keys

    def on_queries(self, layer: int, queries: torch.Tensor) -> None:
        self.queries[layer] = queries


@torch.inference_mode()
def observe_layers(
    engine: ILRe,
    tokens: TokenizedContext,
    query_ids: Sequence[int],
    layers: Sequence[int],
    *more_query_ids: Sequence[int],
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], float]:
    """Keys ``(kv_heads, L, D)`` and query states ``(heads, Tq, D)`` at each of `layers` (the
    last must be ``engine.layer``) from one streaming pass of the context and one of the query:
    what engines with each of those retrieval layers would compute. Also the scaling. Each of
    `more_query_ids` adds its own query pass; their states follow as further dicts."""
    if max(layers) != engine.layer:
        raise ILReError(f"the deepest observed layer must be the engine's ({engine.layer})")
    recorder = LayerRecorder(engine, frozenset(layers) - {engine.layer}, len(tokens))
    encoded = engine.encode_tokens(tokens, progress=False, observer=recorder)
    keys = {engine.layer: encoded.keys, **recorder.keys}
    passes = []
    for ids in (query_ids, *more_query_ids):
        recorder.queries = {}
        queries, scaling = engine.query_states(encoded, ids, observer=recorder)
        passes.append({engine.layer: queries, **recorder.queries})
    return keys, *passes, scaling


@torch.inference_mode()
def _layer_recall(
    engine: ILRe,
    task: RetrievalTask,
    layers: Sequence[int],
    settings: CalibrationSettings,
    candidates: Sequence[Pooling],
) -> dict[int, dict[Pooling, list[float]]]:
    """Per candidate layer and kernel set, the answer recall at each budget."""
    tokens = tokenize_documents(engine.tokenizer, [task.context])
    query_ids, lead_in = engine.query_ids(task.query)
    prior = engine.config.prior_query
    if prior is None:
        keys, queries, scaling = observe_layers(engine, tokens, query_ids, layers)
    else:  # the engine scores over the prior: so does each candidate layer
        prior_ids, prior_lead_in = engine.query_ids(prior)
        keys, queries, priors, scaling = observe_layers(
            engine, tokens, query_ids, layers, prior_ids
        )
    answer_words = answer_words_of(tokens, task.answer_spans)
    doc_ids = torch.from_numpy(tokens.doc_ids).to(engine.device)
    results: dict[int, dict[Pooling, list[float]]] = {}
    for layer in layers:
        block = engine.config.score_block
        heads = head_scores(queries[layer][:, lead_in:], keys[layer], scaling, doc_ids, block)
        if prior is not None:
            baseline = head_scores(
                priors[layer][:, prior_lead_in:], keys[layer], scaling, doc_ids, block
            )
            heads = remove_prior(heads, baseline)
        results[layer] = {}
        for kernels, allocation in candidates:
            scores = pool_scores(heads, kernels, segments=doc_ids, allocation=allocation)
            results[layer][kernels, allocation] = answer_recall(
                tokens, answer_words, scores, settings.budgets
            )
    return results
