"""``ilre index --ray``: the store it builds on a local Ray cluster is the one ``ilre index``
builds in one process, and it refuses what it cannot do as ``ilre index`` does."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel

from ilre_engine import ILRe, persistence
from ilre_engine.cli import main
from ilre_engine.cli.ray_driver import driver_engine
from ilre_engine.loading import default_dtype, resolve_model
from ilre_engine.store import CorpusStore
from tests.tiny_models import worded_config

pytest.importorskip("ray", reason="ilre index --ray needs ray: pip install 'ilre[ray]'")

QUESTION = "Which lock logged a delay of 21 minutes?"
DOCUMENTS = [
    f"Entry {i}: the keeper of lock {i} logged a delay of {i * 7} minutes at the gate. "
    * 4
    * (i + 1)
    for i in range(5)
]


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    """The tiny Gemma 3 of the Ray tests with a window of 512 positions, room for the default
    256 query tokens (the command line loads a model with the default settings); documents
    past the other 256 are still read in segments."""
    directory = tmp_path_factory.mktemp("tiny")
    config = worded_config(tokenizer)
    config.max_position_embeddings = 512
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _index(capsys, *args: str) -> tuple[int, str]:
    status = main(["index", *args])
    return status, capsys.readouterr().err


def _shards(store: CorpusStore):
    for entry in store._manifest["shards"]:
        yield persistence.read(store.directory / entry["name"], store.engine, mapped=True)


def test_index_on_ray_builds_the_store_index_builds(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed (the actors get absolute ones)
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(DOCUMENTS):
        (tmp_path / "docs" / f"{i}.txt").write_text(text)
    common = ["docs", "--model", str(model), "--device", "cpu"]
    status, alone = _index(capsys, "alone", *common)
    assert status == 0 and "alone: added 5, updated 0, skipped 0, deleted 0; 5 documents" in alone
    status, on_ray = _index(
        capsys, "on-ray", *common, "--ray", "local", "--actors", "1", "--batch-size", "2"
    )
    assert status == 0, on_ray
    # The same summary, after whatever Ray logs (its warnings, Ray Data's progress).
    assert on_ray.splitlines()[-1] == alone.strip().replace("alone:", "on-ray:")

    engine = ILRe.from_pretrained(str(model), device="cpu")
    one, many = (CorpusStore.open(tmp_path / name, engine) for name in ("alone", "on-ray"))
    assert len(one._manifest["shards"]) == 1 and len(many._manifest["shards"]) == 3
    for i in range(5):
        source = str(tmp_path / "docs" / f"{i}.txt")  # the file's id: its absolute path
        assert many.document(i) == one.document(i) == (DOCUMENTS[i], {"source": source})
    # Each document is its own stream: the keys of the batches' shards, one after another,
    # are the keys of the one shard, bit for bit, and so are the tokens.
    (record, extra), batches = next(_shards(one)), list(_shards(many))
    assert torch.equal(record.keys, torch.cat([r.keys for r, _ in batches], dim=1))
    for name in ("input_ids", "offsets"):  # document and word ids count within a shard
        assert np.array_equal(
            record.tokens[name], np.concatenate([r.tokens[name] for r, _ in batches])
        )
    assert extra["budget_counts"] == {
        key: [c for _, e in batches for c in e["budget_counts"][key]]
        for key in extra["budget_counts"]
    }
    scores, scores_many = one.token_scores(QUESTION), many.token_scores(QUESTION)
    assert scores.keys() == scores_many.keys()
    for i, values in scores.items():  # blocks of the softmax cut elsewhere: float rounding
        np.testing.assert_allclose(scores_many[i], values, rtol=1e-5, atol=1e-9)
    recalled, recalled_many = (s.recall(QUESTION, budget_tokens=30) for s in (one, many))
    assert recalled_many.text == recalled.text
    assert [(s.document, s.start, s.end) for s in recalled_many.spans] == [
        (s.document, s.start, s.end) for s in recalled.spans
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--actors", "2"], "--actors needs --ray ADDRESS"),
        (["--tokenizer-actors", "0"], "--tokenizer-actors needs --ray ADDRESS"),
        (["--ray", "local", "--device", "cuda"], "needs --gpus-per-actor > 0"),
        (["--ray", "local", "--gpus-per-actor", "1", "--device", "cpu"], "reserves GPUs"),
        (["--ray", "local", "--device", "gpu7"], "unknown device 'gpu7'"),
        (["--ray", "local", "--cleanup", "full"], "--cleanup does not work with --ray"),
    ],
)
def test_index_refuses_ray_options_it_cannot_use(args, message, tmp_path, capsys):
    status, err = _index(capsys, str(tmp_path / "s"), str(tmp_path / "missing.txt"), *args)
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


def test_index_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    (tmp_path / "a.txt").write_text(DOCUMENTS[0])
    status, err = _index(capsys, str(tmp_path / "s"), str(tmp_path / "a.txt"), "--ray", "auto")
    assert status == 2 and err.count("\n") == 1 and 'pip install "ilre[ray]"' in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_driver_loads_in_the_dtype_the_actors_get(device):
    """`--ray`: the driver opens the store on the CPU, and the actors load in its dtype: the
    one `ilre index` loads the embedded model in here for CPU actors (bfloat16 where the CPU
    multiplies it natively), bfloat16 for CUDA actors. A store made without `--ray` on this
    machine can so be extended with it."""
    driver = driver_engine(None, device)
    expected = default_dtype(torch.device(device), resolve_model(None))
    assert driver.device.type == "cpu" and driver.model.dtype == expected
