"""Encoding throughput of `encode_corpus` with one GPU actor against one process, on one GPU.

    python benchmarks/ray_gpu.py prepare --pack DIR/pack       # CPU: corpus, trunk, tokenizer
    python DIR/ray_gpu.py run --pack DIR/pack --out result.json   # GPU (or CPU, to verify)

`prepare` copies the script next to the pack, as the GPU machine runs the main checkout;
`lab/ray_carry.py` makes the two folders that carry it there with Ray.

Both ways encode the same corpus into a `CorpusStore` with the embedded model (the Gemma 3
270M trunk, layers 0..l_R, as `gguf_pack` packs it; bfloat16 on CUDA): one process calling
`write_shard` on batches of `--batch-size` documents and committing the shards at the end
(as the actors do, so the shards are alike), and `encode_corpus` over a Ray dataset of the
same documents with one actor reserving one GPU (``--gpus-per-actor``). Each repeat runs one
of each, side by side (the order alternating), after `--warmup` unmeasured rounds on the
first `--warmup-documents`; the medians are reported as model tokens per second, with the
ratio. No round starts past `--budget-s` once one has been measured. The Ray time is the
driver's wall clock of the whole call (a new actor pool each time: Ray Data's startup, the
actor's process and engine, the commit); ``after_ready`` counts from the moment the actor's
engine was built.

`--tokenizer-actors` is `encode_corpus`'s `tokenizer_actors`: CPU actors that tokenise and
count each batch ahead of the GPU actor (default 1, as `encode_corpus`; 0 leaves that work
in the GPU actor, in front of its encoding). Given several values (``--tokenizer-actors 1
0``), each round times the Ray path once per value, side by side with the single process:
the first value's way is ``ray``, as with one value, the others' ``ray_tokenizers_N``, each
with its own figures in the summary (its name as their prefix) and its store checked
against the single process's (``stores_<way>``; ``stores`` for ``ray``).

Each encode (`Encoder.document_keys`, synchronised) is timed in both ways: a single-process
round reports its ``encode_seconds``; a Ray round the actor's ``encode_seconds``, the time
``between_encodes_seconds`` (writing a shard, waiting for the next batch) and
``after_last_encode_seconds`` (its last shard, the commit). Each way also records its
wall times (``began``, ``ended``) and each encode's (``encodes``), to line up with
`lab/host_monitor.py`'s samples of the host.

Peak GPU memory is `torch.cuda.max_memory_allocated` of each process: the driver's around
its encoding, the actor's written by its engine to a file at every new peak. The driver uses
as many torch threads as an actor gets (``--cpus-per-actor``: Ray sets the actor's
``OMP_NUM_THREADS`` to it).

The stores of the last round are checked equal: the same documents and metadata under the
same ids, the keys of every document within `KEY_TOLERANCE` of the largest key magnitude
(both processes run the same kernels on the same shapes, so bit-equal keys are expected;
the tolerance allows a different cuBLAS choice in the other process, which rounds in
bfloat16), and recall of one question selecting the same text.

The corpus: `--documents` slices of 1,000 to 2,000 model tokens (`--min-tokens`,
`--max-tokens`) at random places of the haystack essays (`calibration.tasks.essays`),
written by `prepare` as the essays and the slices' character ranges; the pack holds the
embedding rows of every id that the documents, the question and the prior question
tokenise to, and `run` checks that it does before measuring. The GPU machine has no
network: the budget counter is a word count, and the tokenizer travels xz-compressed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import lzma
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ilre_engine

LAB = Path(ilre_engine.__file__).parents[1] / "benchmarks" / "lab"
sys.path.insert(0, str(LAB))

from gguf_pack import build_trunk, pack_trunk, rebuild_state  # noqa: E402  (after the path)

QUESTION = "What did the author say about how startups should choose what to build?"
KEY_TOLERANCE = 1e-2
"""Largest difference allowed between the two stores' keys, relative to the largest key."""


def words(text: str) -> int:
    """The budget counter on the GPU machine, which cannot fetch tiktoken's encodings."""
    return len(text.split())


# -- prepare (CPU) ------------------------------------------------------------------------------


def prepare(args) -> None:
    from ilre_engine import ILRe
    from ilre_engine.calibration.tasks import essays
    from ilre_engine.loading import resolve_model
    from ilre_engine.tokenization import tokenize_documents

    pack: Path = args.pack
    pack.mkdir(parents=True, exist_ok=True)
    engine = ILRe.from_pretrained(device="cpu")
    text = essays()
    offsets = engine.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    rng = np.random.default_rng(args.seed)
    spans, ids, tokens = [], [], 0
    for _ in range(args.documents):
        length = int(rng.integers(args.min_tokens, args.max_tokens + 1))
        start = int(rng.integers(0, len(offsets) - length - 1))
        span = (offsets[start][0], offsets[start + length][0])
        encoded = tokenize_documents(engine.tokenizer, [text[span[0] : span[1]]])
        spans.append(span)
        ids.append(encoded.input_ids)
        tokens += len(encoded.input_ids)
    for query in (QUESTION, engine.config.prior_query):
        ids.append(np.asarray(engine.query_ids(query)[0]))
    ids.append(np.asarray([engine.tokenizer.bos_token_id]))
    pack_trunk(pack, np.concatenate(ids).astype(np.int64), engine.layer)
    with lzma.open(pack / "corpus.json.xz", "wt", encoding="utf-8") as file:
        json.dump({"essays": text, "spans": spans}, file)
    source = Path(resolve_model(None).path)
    (pack / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(source / "tokenizer_config.json", pack / "tokenizer")
    packed = pack / "tokenizer" / "tokenizer.json.xz"
    with (source / "tokenizer.json").open("rb") as raw, lzma.open(packed, "wb", preset=9) as xz:
        shutil.copyfileobj(raw, xz)
    meta = {
        "model": engine.name,
        "layer": engine.layer,
        "config": dataclasses.asdict(engine.config),
        "documents": args.documents,
        "model_tokens": tokens,
        "tokenizer_sha256": engine.tokenizer_sha256,
    }
    (pack / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.copy(__file__, pack.parent / Path(__file__).name)
    size = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    print(f"{args.documents} documents, {tokens:,} model tokens; {pack}: {size / 2**20:.1f} MiB")


# -- run (GPU) ----------------------------------------------------------------------------------


def load_tokenizer(pack: Path):
    """The embedded model's tokenizer from the pack, decompressed once into a folder of the
    temporary directory (not the pack's, which a later call would carry) that the driver
    and the actors share."""
    from transformers import AutoTokenizer

    folder = Path(tempfile.gettempdir()) / "ilre-ray-gpu-tokenizer"
    folder.mkdir(exist_ok=True)
    if not (folder / "tokenizer.json").exists():
        scratch = folder / f"tokenizer.json.{os.getpid()}"
        source = pack / "tokenizer" / "tokenizer.json.xz"
        with lzma.open(source, "rb") as packed, scratch.open("wb") as raw:
            shutil.copyfileobj(packed, raw)
        shutil.copy(pack / "tokenizer" / "tokenizer_config.json", folder)
        scratch.replace(folder / "tokenizer.json")
    return AutoTokenizer.from_pretrained(folder)


def build_engine(
    pack: str, device: str, dtype: str, batch_documents: int | None, stats: str | None = None
):
    """The engine of the driver and of each actor: the packed trunk on `device`. With `stats`,
    a file where it writes when it was built and its process's peak GPU memory, again at
    each new peak (the actor's engine: Ray Data ends the actor with the run)."""
    from ilre_engine import ILRe, ILReConfig

    root = Path(pack)
    meta = json.loads((root / "meta.json").read_text())
    settings = {**meta["config"], "kernel_sizes": tuple(meta["config"]["kernel_sizes"])}
    config = ILReConfig(**{**settings, "batch_documents": batch_documents})
    trunk = build_trunk(root, rebuild_state(root), meta["layer"], device, getattr(torch, dtype))
    engine = ILRe(
        trunk,
        load_tokenizer(root),
        layer=meta["layer"],
        name=meta["model"],
        config=config,
        budget_tokenizer=words,
    )
    encode = engine.encoder.document_keys
    engine.encodes = []  # (start, end) of each encode, synchronised: both ways report them

    def timed_keys(*args, **kwargs):
        began = time.time()
        encoded = encode(*args, **kwargs)
        synchronize(device)
        engine.encodes.append((began, time.time()))
        return encoded

    engine.encoder.document_keys = timed_keys
    if stats is None:
        return engine
    cuda = torch.device(device).type == "cuda"
    # The actor checks its engine against the store (`CorpusStore.open`) before any batch:
    # the weights' fingerprint and the tokenizer's identity, computed once an engine, are
    # part of its start (the driver's engine computed its own before any timing).
    _ = engine.fingerprint, engine.tokenizer_sha256
    record = {"pid": os.getpid(), "ready": time.time(), "peak_bytes": 0, "first_batch": None}
    record["torch_threads"] = torch.get_num_threads()
    record["encodes"] = engine.encodes
    first = [True]

    def write() -> None:
        Path(stats).write_text(json.dumps(record))

    def document_keys(*args, **kwargs):
        if record["first_batch"] is None:
            record["first_batch"] = time.time()
            write()
        encoded = timed_keys(*args, **kwargs)
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        if peak > record["peak_bytes"] or first[0]:
            record["peak_bytes"], first[0] = peak, False
        write()
        return encoded

    engine.encoder.document_keys = document_keys
    write()
    return engine


def corpus(pack: Path, count: int | None) -> list[str]:
    with lzma.open(pack / "corpus.json.xz", "rt", encoding="utf-8") as file:
        data = json.load(file)
    text = data["essays"]
    return [text[a:b] for a, b in data["spans"][:count]]


def check_pack(engine, pack: Path, documents: list[str]) -> int:
    """Model tokens of `documents`; refuses ids whose embedding rows the pack lacks (they
    would read as zeros)."""
    from ilre_engine.tokenization import tokenize_documents

    packed = set(np.load(pack / "trunk.npz")["embed_ids"].tolist())
    used, tokens = set(), 0
    for document in documents:
        ids = tokenize_documents(engine.tokenizer, [document]).input_ids
        used.update(ids.tolist())
        tokens += len(ids)
    for query in (QUESTION, engine.config.prior_query):
        used.update(engine.query_ids(query)[0])
    missing = used - packed
    if missing:
        raise SystemExit(f"the pack lacks the embedding rows of {len(missing)} ids")
    return tokens


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def single_process(engine, directory: Path, documents, batch_size: int, device: str) -> dict:
    """`write_shard` on each batch, then one commit: what the actors and the driver do."""
    from ilre_engine.store import CorpusStore, write_shard

    cuda = torch.device(device).type == "cuda"
    store = CorpusStore.create(directory, engine)
    engine.encodes.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    names = [
        write_shard(
            directory,
            engine,
            documents[i : i + batch_size],
            [{"n": n} for n in range(i, min(i + batch_size, len(documents)))],
            progress=False,
        )
        for i in range(0, len(documents), batch_size)
    ]
    store.commit(names)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    return {
        "seconds": seconds,
        "peak_bytes": peak,
        "shards": len(names),
        "encode_seconds": sum(b - a for a, b in engine.encodes),
        "encodes": list(engine.encodes),
    }


def on_ray(
    engine, directory: Path, dataset, count: int, factory, args, stats: Path, tokenizers: int
) -> dict:
    from ilre_engine.distributed import encode_corpus
    from ilre_engine.store import CorpusStore

    store = CorpusStore.create(directory, engine)
    factory = functools.partial(factory, stats=str(stats))
    start_wall = time.time()
    start = time.perf_counter()
    ids = encode_corpus(
        dataset,
        store,
        factory,
        batch_size=args.batch_size,
        num_actors=1,
        num_gpus_per_actor=args.gpus_per_actor,
        num_cpus_per_actor=args.cpus_per_actor,
        tokenizer_actors=tokenizers,
        num_cpus_per_tokenizer=args.cpus_per_tokenizer,
        metadata_columns=["n"],
    )
    seconds = time.perf_counter() - start
    end_wall = time.time()
    actor = json.loads(stats.read_text())
    assert ids == list(range(count)), ids[-5:]
    return {
        "seconds": seconds,
        "startup_seconds": actor["ready"] - start_wall,
        "after_ready_seconds": end_wall - actor["ready"],
        "from_first_batch_seconds": end_wall - actor["first_batch"],
        "peak_bytes": actor["peak_bytes"],
        "actor_pid": actor["pid"],
        "actor_torch_threads": actor["torch_threads"],
        "shards": len(store._manifest["shards"]),
        "tokenizer_actors": tokenizers,
        # Where the actor's time went: encoding (GPU work, synchronised), between two
        # encodes (writing a shard, waiting for the next batch), after the last one.
        "encode_seconds": sum(b - a for a, b in actor["encodes"]),
        "between_encodes_seconds": sum(
            b[0] - a[1] for a, b in zip(actor["encodes"], actor["encodes"][1:], strict=False)
        ),
        "after_last_encode_seconds": end_wall - actor["encodes"][-1][1],
        "encodes": actor["encodes"],
    }


def ray_ways(tokenizer_actors: list[int]) -> dict[str, int]:
    """The Ray paths of a round, by name: each value of `--tokenizer-actors`, the first one's
    named ``ray`` (what the one Ray path of earlier runs was named)."""
    first, *others = tokenizer_actors
    return {"ray": first, **{f"ray_tokenizers_{n}": n for n in others}}


def compare(one_dir: Path, many_dir: Path, engine, count: int) -> dict:
    """The two stores: documents, metadata, keys (within `KEY_TOLERANCE`), one recall."""
    from ilre_engine import persistence
    from ilre_engine.store import CorpusStore

    one, many = CorpusStore.open(one_dir, engine), CorpusStore.open(many_dir, engine)
    same_documents = all(one.document(i) == many.document(i) for i in range(count))

    def keys(store):
        for entry in store._manifest["shards"]:
            record, _ = persistence.read(store.directory / entry["name"], engine, mapped=True)
            yield record.keys

    left, right = torch.cat(list(keys(one)), dim=1), torch.cat(list(keys(many)), dim=1)
    largest, difference, bit_equal = 0.0, 0.0, left.shape == right.shape
    if left.shape == right.shape:
        step = 1 << 18
        for i in range(0, left.shape[1], step):
            a = left[:, i : i + step].to(engine.device, torch.float32)
            b = right[:, i : i + step].to(engine.device, torch.float32)
            largest = max(largest, float(a.abs().max()))
            difference = max(difference, float((a - b).abs().max()))
            bit_equal = bit_equal and torch.equal(a, b)
    recalled = [s.recall(QUESTION, budget_tokens=500) for s in (one, many)]
    same_keys = left.shape == right.shape and difference <= KEY_TOLERANCE * largest
    return {
        "documents_and_metadata_equal": same_documents,
        "keys_shape": list(left.shape),
        "keys_bit_equal": bit_equal,
        "keys_max_abs_difference": difference,
        "keys_max_abs": largest,
        "keys_tolerance_relative": KEY_TOLERANCE,
        "keys_within_tolerance": same_keys,
        "recall_text_equal": recalled[0].text == recalled[1].text,
        "recall_spans": [len(r.spans) for r in recalled],
        "equal": same_documents and same_keys and recalled[0].text == recalled[1].text,
    }


def run(args) -> None:
    import ray

    from ilre_engine import ILRe

    pack, work, out = args.pack.resolve(), args.work.resolve(), args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # The actors import ilre_engine and gguf_pack as the driver does.
    root = Path(ilre_engine.__file__).parents[1]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(LAB), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    started = time.perf_counter()
    # The driver's torch threads as many as Ray gives an actor (its OMP_NUM_THREADS).
    torch.set_num_threads(max(1, int(args.cpus_per_actor)))
    factory = functools.partial(
        build_engine, str(pack), args.device, args.dtype, args.batch_documents
    )
    engine = factory()
    # The same model, reading one document at a time (what write_shard did before batching).
    one_at_a_time = ILRe(
        engine.model,
        engine.tokenizer,
        layer=engine.layer,
        name=engine.name,
        config=dataclasses.replace(engine.config, batch_documents=1),
        budget_tokenizer=words,
    )
    documents = corpus(pack, args.documents) * args.repeat_corpus
    tokens = check_pack(engine, pack, documents)
    cuda = torch.device(args.device).type == "cuda"
    local = {  # the resources of a cluster started here
        "num_cpus": args.num_cpus,
        "num_gpus": torch.cuda.device_count() if cuda else 0,
        "include_dashboard": False,
        "object_store_memory": args.object_store_mib * 2**20,
    }
    ray.init(address=args.ray, **(local if args.ray == "local" else {}))
    rows = [{"text": t, "n": n} for n, t in enumerate(documents)]
    # One block per batch, as `ilre index --ray` builds its dataset: Ray Data cuts batches
    # at block borders, so its default blocks would make about twice as many shards.
    datasets = {
        warmup: ray.data.from_items(part, override_num_blocks=-(-len(part) // args.batch_size))
        for warmup, part in ((False, rows), (True, rows[: args.warmup_documents]))
    }
    result = {
        "device": torch.cuda.get_device_name() if cuda else args.device,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "documents": len(documents),
        "repeat_corpus": args.repeat_corpus,
        "model_tokens": tokens,
        "warmup_documents": min(args.warmup_documents, len(documents)),
        "batch_size": args.batch_size,
        "batch_documents": args.batch_documents,
        "gpus_per_actor": args.gpus_per_actor,
        "cpus_per_actor": args.cpus_per_actor,
        "tokenizer_actors": ray_ways(args.tokenizer_actors),
        "cpus_per_tokenizer": args.cpus_per_tokenizer,
        "driver_torch_threads": torch.get_num_threads(),
        "setup_seconds": time.perf_counter() - started,
        "rounds": [],
    }
    for index in range(args.warmup + args.repeats):
        if index > args.warmup and time.perf_counter() - started > args.budget_s:
            result["stopped_early"] = f"past --budget-s {args.budget_s} after {index} rounds"
            break
        # The order alternates, so no way always runs on a warmer machine.
        ways = ("single", *result["tokenizer_actors"])
        order = ways if index % 2 == 0 else ways[::-1]
        order = (*order, "single_one_at_a_time") if args.one_at_a_time else order
        warmup = index < args.warmup
        chosen = documents[: args.warmup_documents] if warmup else documents
        round_ = {"warmup": warmup, "order": order}
        for way in order:
            directory = work / f"{way}-{index}"
            began = time.time()
            if way.startswith("single"):
                reader = engine if way == "single" else one_at_a_time
                round_[way] = single_process(
                    reader, directory, chosen, args.batch_size, args.device
                )
            else:
                stats = work / f"actor-{index}.json"
                tokenizers = result["tokenizer_actors"][way]
                round_[way] = on_ray(
                    engine,
                    directory,
                    datasets[warmup],
                    len(chosen),
                    factory,
                    args,
                    stats,
                    tokenizers,
                )
            round_[way] |= {"began": began, "ended": time.time()}
            brief = {k: v for k, v in round_[way].items() if k != "encodes"}
            print(f"round {index} {way}: {brief}", flush=True)
        result["rounds"].append(round_)
        for way in order:  # only the last round's stores are kept
            if index > 0:
                shutil.rmtree(work / f"{way}-{index - 1}", ignore_errors=True)
        summarise(result)
        out.write_text(json.dumps(result, indent=1))
    last = len(result["rounds"]) - 1
    for way in result["tokenizer_actors"]:
        result["stores" if way == "ray" else f"stores_{way}"] = compare(
            work / f"single-{last}", work / f"{way}-{last}", engine, len(documents)
        )
    result["seconds"] = time.perf_counter() - started
    out.write_text(json.dumps(result, indent=1))
    ray.shutdown()
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


def summarise(result: dict) -> None:
    """Medians of the measured rounds (all documents; none yet: no summary)."""
    rounds = [r for r in result["rounds"] if not r["warmup"]]
    if not rounds:
        return
    tokens = result["model_tokens"]
    single = statistics.median(r["single"]["seconds"] for r in rounds)
    summary = {
        "measured_rounds": len(rounds),
        "single_tokens_per_s": tokens / single,
        "single_peak_gib": max(r["single"]["peak_bytes"] for r in rounds) / 2**30,
    }
    for way in result["tokenizer_actors"]:
        ray = statistics.median(r[way]["seconds"] for r in rounds)
        after_ready = statistics.median(r[way]["after_ready_seconds"] for r in rounds)
        working = statistics.median(r[way]["from_first_batch_seconds"] for r in rounds)
        # "paired": rounds vary (the machine, the order), so each round's own ratio, then
        # their median. The first Ray way's "paired_..." and "actor_..." keep their names.
        paired, actor = ("paired", "actor") if way == "ray" else (f"{way}_paired", way)
        summary |= {
            f"{way}_tokens_per_s": tokens / ray,
            f"{way}_after_ready_tokens_per_s": tokens / after_ready,
            f"{way}_over_single": single / ray,
            f"{way}_after_ready_over_single": single / after_ready,
            f"{way}_from_first_batch_tokens_per_s": tokens / working,
            f"{way}_from_first_batch_over_single": single / working,
            f"{paired}_from_first_batch_over_single": statistics.median(
                r["single"]["seconds"] / r[way]["from_first_batch_seconds"] for r in rounds
            ),
            f"{way}_startup_seconds": statistics.median(r[way]["startup_seconds"] for r in rounds),
            f"{actor}_peak_gib": max(r[way]["peak_bytes"] for r in rounds) / 2**30,
        }
    result["summary"] = summary
    if all("single_one_at_a_time" in r for r in rounds):
        alone = statistics.median(r["single_one_at_a_time"]["seconds"] for r in rounds)
        result["summary"]["one_at_a_time_tokens_per_s"] = tokens / alone
        result["summary"]["single_over_one_at_a_time"] = alone / single


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--pack", type=Path, required=True)
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--min-tokens", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    r = commands.add_parser("run")
    r.add_argument("--pack", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/ilre-ray-gpu"))
    r.add_argument("--documents", type=int, help="the first N of the pack's (default: all)")
    r.add_argument(
        "--repeat-corpus",
        type=int,
        default=1,
        help="encode the documents this many times over (a longer run, so that per-call "
        "costs weigh less against throughput)",
    )
    r.add_argument("--device", default="cuda")
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--batch-size", type=int, default=128, help="documents per shard")
    r.add_argument(
        "--batch-documents",
        type=int,
        help="documents read side by side (default: the engine's, 64 on CUDA, 16 on the CPU)",
    )
    r.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="also time the single process reading one document at a time",
    )
    r.add_argument("--gpus-per-actor", type=float, default=1)
    r.add_argument("--cpus-per-actor", type=float, default=1)
    r.add_argument(
        "--tokenizer-actors",
        type=int,
        nargs="+",
        default=[1],
        metavar="N",
        help="encode_corpus's tokenizer_actors (CPU actors tokenising ahead of the GPU actor; "
        "0: none); several values time the Ray path once per value in each round",
    )
    r.add_argument("--cpus-per-tokenizer", type=float, default=1)
    r.add_argument("--ray", default="local", help="ray.init's address")
    r.add_argument("--num-cpus", type=int, help="the local cluster's CPUs (default: all)")
    r.add_argument("--object-store-mib", type=int, default=2048)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument(
        "--warmup-documents", type=int, default=256, help="the first N, in warm-up rounds"
    )
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument(
        "--budget-s", type=float, default=400, help="start no new round past this many seconds"
    )
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
