"""`ILRe.fp8()`: FP8 projections in the layers below the retrieval layer.

What a CPU can check: the refusals (no FP8 tensor cores, a model that is not bf16), the
weights' per-channel quantisation and its round trip, that the swap covers exactly the
linears of layers ``0..l_R-1``, and the module's arithmetic against a float32 emulation
(quantise and dequantise both operands, multiply in float32). The module's own product runs
where `torch._scaled_mm` runs: on CUDA of compute capability 8.9 or newer, and on the CPU
in recent torch (2.13 has a reference kernel); elsewhere those checks skip. The GPU
benchmark (`benchmarks/gpu_fp8.py`) measures speed and ranking on the real kernels.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ilre_engine import ILRe, fp8
from ilre_engine.compiled import FUSED_ATTENTION, compile_layers
from ilre_engine.errors import ConfigError
from ilre_engine.fp8 import (
    FP8_MAX,
    Fp8Linear,
    quantize_trunk,
    require_fp8,
    swap_linears,
    trunk_linears,
)
from ilre_engine.loading import model_fingerprint
from ilre_engine.testing.reference import relative_error
from tests.tiny_models import build_models, random_context, tiny_configs, tiny_engine

LAYER = 3
FP8_CUDA = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def emulated_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The reference: both operands rounded to e4m3 under rowwise scales (the largest
    magnitude of each row onto 448), dequantised, multiplied in float32."""

    def round_trip(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.float()
        scale = rows.abs().amax(dim=-1, keepdim=True) / 448.0
        return (rows / scale).to(torch.float8_e4m3fn).float() * scale

    return round_trip(x) @ round_trip(weight).T


def scaled_mm_runs(device: str) -> bool:
    """Whether `torch._scaled_mm` with rowwise scales runs on `device` in this torch."""
    a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(
            a,
            a.t(),
            scale_a=torch.ones(16, 1, device=device),
            scale_b=torch.ones(1, 16, device=device),
            out_dtype=torch.bfloat16,
        )
    except (RuntimeError, NotImplementedError):
        return False
    return True


DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not scaled_mm_runs("cpu"), reason="this torch has no rowwise _scaled_mm on the CPU"
        ),
    ),
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not FP8_CUDA, reason="needs CUDA of compute capability 8.9+"),
    ),
]


def bf16_trunk(family: str = "llama") -> tuple[torch.nn.Module, torch.nn.Module]:
    full, trunk = build_models(tiny_configs()[family], LAYER)
    return full, trunk.to(torch.bfloat16)


def test_refused_on_the_cpu_before_anything_changes():
    _, trunk = bf16_trunk()
    engine = tiny_engine(trunk, LAYER)
    with pytest.raises(ConfigError, match=r"CUDA GPU of compute capability 8\.9"):
        engine.fp8()
    assert not any(isinstance(m, Fp8Linear) for m in trunk.modules())


def test_refused_below_compute_capability_8_9(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ConfigError, match=r"A100 has 8\.0"):
        require_fp8(torch.device("cuda"))


def test_from_pretrained_refuses_an_unknown_fp8_setting_before_loading(monkeypatch):
    monkeypatch.setattr(
        "ilre_engine.engine.resolve_model", lambda *a, **k: pytest.fail("loaded a model")
    )
    with pytest.raises(ConfigError, match=r"fp8 must be False, True or 'fast', got 'fastest'"):
        ILRe.from_pretrained(device="cpu", fp8="fastest")
    with pytest.raises(ConfigError, match="CUDA GPU"):
        ILRe.from_pretrained(device="cpu", fp8="fast")


def test_fast_accumulation_is_set_on_every_fp8_projection_and_switches_back(monkeypatch):
    # The switch itself needs no GPU: only its device check does.
    monkeypatch.setattr(fp8, "require_fp8", lambda device: None)
    _, trunk = bf16_trunk()
    assert quantize_trunk(trunk, LAYER, fast_accumulation=True) == 7 * LAYER
    modules = [m for m in trunk.modules() if isinstance(m, Fp8Linear)]
    assert len(modules) == 7 * LAYER and all(m.fast_accum for m in modules)
    assert "fast_accum=True" in repr(modules[0])
    assert quantize_trunk(trunk, LAYER) == 0  # nothing left to replace; the flag follows
    assert not any(m.fast_accum for m in modules)


def test_refuses_a_model_that_is_not_bf16():
    _, trunk = build_models(tiny_configs()["llama"], LAYER)  # float32
    with pytest.raises(ConfigError, match="bfloat16"):
        swap_linears(trunk, LAYER)
    assert not any(isinstance(m, Fp8Linear) for m in trunk.modules())


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_the_swap_covers_exactly_the_linears_below_the_retrieval_layer(family):
    _, trunk = bf16_trunk(family)
    before = {name for name, m in trunk.named_modules() if isinstance(m, nn.Linear)}
    expected = {n for n in before if int(n.split(".")[1]) < LAYER}
    assert len(expected) == 7 * LAYER  # q, k, v, o, gate, up, down

    assert swap_linears(trunk, LAYER) == len(expected)
    swapped = {name for name, m in trunk.named_modules() if isinstance(m, Fp8Linear)}
    kept = {name for name, m in trunk.named_modules() if isinstance(m, nn.Linear)}
    assert swapped == expected
    assert kept == before - expected  # the retrieval layer's projections stay bf16
    assert all(p.dtype == torch.bfloat16 for p in trunk.parameters())
    assert trunk_linears(trunk, LAYER) == []  # a second call changes nothing
    assert swap_linears(trunk, LAYER) == 0


def test_weights_are_quantised_per_output_channel_and_round_trip():
    torch.manual_seed(0)
    linear = nn.Linear(96, 48, bias=True).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight[5] *= 100.0  # an outlier channel must not cost the others resolution
        linear.weight[7] = 0.0  # an all-zero channel gets a finite scale and zeros
    module = Fp8Linear.from_linear(linear)
    weight = linear.weight.detach().float()

    assert module.weight_fp8.dtype == torch.float8_e4m3fn
    assert module.weight_fp8.shape == (48, 96) and module.weight_scale.shape == (1, 48)
    amax = weight.abs().amax(dim=1)
    nonzero = amax > 0
    torch.testing.assert_close(module.weight_scale[0][nonzero], amax[nonzero] / FP8_MAX)
    magnitudes = module.weight_fp8.float().abs().amax(dim=1)
    assert torch.equal(magnitudes[nonzero], torch.full_like(magnitudes[nonzero], FP8_MAX))
    assert torch.isfinite(module.weight_scale).all() and not module.dequantized_weight()[7].any()

    # e4m3 keeps 3 mantissa bits: each weight within 2^-4 of its magnitude (round to
    # nearest), or within half the smallest subnormal step of its row for tiny ones.
    error = (module.dequantized_weight() - weight).abs()
    bound = weight.abs() * 2.0**-4 + module.weight_scale.reshape(-1, 1) * 2.0**-10
    assert (error <= bound).all()
    assert relative_error(module.dequantized_weight()[nonzero], weight[nonzero]) < 0.04
    torch.testing.assert_close(module.bias, linear.bias)


@pytest.mark.parametrize("device", DEVICES)
def test_the_product_is_the_emulated_fp8_product(device):
    torch.manual_seed(1)
    linear = nn.Linear(128, 64, bias=True).to(device, torch.bfloat16).requires_grad_(False)
    module = Fp8Linear.from_linear(linear)
    for rows in (1, 7, 300):  # any token count, as chunks and queries give
        x = torch.randn(1, rows, 128, device=device, dtype=torch.bfloat16)
        x[0, 0] *= 50.0  # an outlier token
        out = module(x)
        assert out.shape == (1, rows, 64) and out.dtype == torch.bfloat16
        expected = emulated_product(x[0], linear.weight) + linear.bias.float()
        # The same quantised operands: only float32 summation order and bf16 output rounding.
        assert relative_error(out[0], expected) < 4e-3
        # Against the unquantised product: FP8 rounding of both operands.
        assert relative_error(out[0], linear(x)[0]) < 0.08


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_trunk_encodes_eager_and_compiled_alike(device):
    """An FP8 trunk runs the engine's streaming prefill, and compiled layers (traced with
    ``aot_eager``, as in test_compiled) compute what the eager FP8 layers compute."""
    _, trunk = bf16_trunk()
    trunk.to(device)
    engine = tiny_engine(trunk, LAYER, chunk_size=64, sink=4, window=32)
    context = random_context(203, seed=2)
    swap_linears(trunk, LAYER)
    eager = engine.encode_tokens(context)
    assert eager.keys.dtype == torch.bfloat16 and torch.isfinite(eager.keys).all()

    torch._dynamo.reset()
    compile_layers(trunk, backend="aot_eager")
    # On CUDA compiled layers send full chunks through FlexAttention, another kernel than the
    # eager SDPA: keep SDPA, so that only the tracing of the FP8 layers is compared.
    for layer in trunk.layers:
        setattr(layer.self_attn, FUSED_ATTENTION, False)
    compiled = engine.encode_tokens(context)
    assert relative_error(compiled.keys, eager.keys) < 1e-3
    torch._dynamo.reset()


@pytest.mark.skipif(not FP8_CUDA, reason="needs CUDA of compute capability 8.9+")
def test_engine_fp8_on_the_gpu_keeps_bf16_keys():
    _, trunk = bf16_trunk()
    engine = tiny_engine(trunk.to("cuda"), LAYER, chunk_size=64, sink=4, window=32)
    before = model_fingerprint(trunk, LAYER)
    assert engine.fp8() is engine
    assert sum(isinstance(m, Fp8Linear) for m in trunk.modules()) == 7 * LAYER
    encoded = engine.encode_tokens(random_context(203, seed=2))
    assert encoded.keys.dtype == torch.bfloat16
    assert model_fingerprint(trunk, LAYER) == before  # the retrieval layer's are unchanged
