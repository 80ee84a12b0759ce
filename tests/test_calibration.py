"""Layer calibration: one pass observes what every single-layer engine computes; profiles are
written, found and applied; the shipped profile drives the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ilre_engine import ILRe, ILReError
from ilre_engine.calibration import HYBRID_PASSAGE_TOKENS, HYBRID_WEIGHTS, observe_layers
from ilre_engine.loading import cache_root
from ilre_engine.profiles import SHIPPED, Profile, config_sha256, user_profile_path
from tests.tiny_models import build_models, random_context, tiny_configs, tiny_engine

LAYERS = (0, 1, 2, 3)


@pytest.mark.parametrize("family", ["llama", "gemma3", "mistral-sliding"])
def test_one_pass_observes_what_each_retrieval_layer_computes(family):
    _, trunk = build_models(tiny_configs()[family], LAYERS[-1])
    context = random_context(150, seed=3)
    query_ids = [5, 17, 42, 99, 7]
    knobs = dict(chunk_size=32, sink=4, window=40)  # eviction on every global layer
    keys, queries, scaling = observe_layers(
        tiny_engine(trunk, LAYERS[-1], **knobs), context, query_ids, LAYERS
    )
    for layer in LAYERS:
        engine = tiny_engine(trunk, layer, **knobs)
        encoded = engine.encode_tokens(context)
        expected_queries, expected_scaling = engine.query_states(encoded, query_ids)
        assert keys[layer].equal(encoded.keys), layer
        assert queries[layer].equal(expected_queries), layer
        assert scaling == expected_scaling


def test_the_shipped_profile_drives_the_embedded_model(engine):
    shipped = Profile.load(SHIPPED / "gemma3-270m.json")
    assert engine.profile == shipped
    assert engine.layer == shipped.layer
    assert engine.config.kernel_sizes == shipped.kernel_sizes
    # The choice follows the rule: the shallowest layer within tolerance of the best.
    best = {int(layer): max(by_kernels.values()) for layer, by_kernels in shipped.recall.items()}
    tolerance = shipped.settings["tolerance"]
    within = [layer for layer, value in best.items() if value >= max(best.values()) - tolerance]
    assert shipped.layer == min(within)
    assert (
        shipped.recall[str(shipped.layer)][",".join(map(str, shipped.kernel_sizes))]
        == (best[shipped.layer])
    )


def test_a_user_profile_is_found_and_applied(engine, tmp_path):
    (tmp_path / "models").symlink_to(cache_root() / "models")  # the converted model, shared
    shipped = Profile.load(SHIPPED / "gemma3-270m.json")
    mine = Profile(**{**shipped.__dict__, "layer": 3, "kernel_sizes": (1, 9), "window": 999})
    mine.save(user_profile_path(tmp_path, "gemma3-270m"))
    tuned = ILRe.from_pretrained(cache_dir=tmp_path)
    assert (tuned.layer, tuned.config.kernel_sizes, tuned.config.window) == (3, (1, 9), 999)
    assert tuned.profile == mine
    plain = ILRe.from_pretrained(cache_dir=tmp_path, profile=False)
    # Without a profile: the paper's depth (3/32 of 18 layers = 2) moved to the first global
    # layer at or after it, since layers 0-4 of Gemma 3 slide over 512 tokens.
    assert plain.profile is None and plain.layer == 5
    explicit = ILRe.from_pretrained(cache_dir=tmp_path, profile=SHIPPED / "gemma3-270m.json")
    assert explicit.layer == shipped.layer
    assert ILRe.from_pretrained(cache_dir=tmp_path, layer=7).layer == 7  # layer= wins


def test_profiles_that_do_not_fit_are_refused(engine, tmp_path):
    shipped = Profile.load(SHIPPED / "gemma3-270m.json")
    other = Profile(**{**shipped.__dict__, "config_sha256": config_sha256(tiny_configs()["llama"])})
    path = other.save(tmp_path / "other.json")
    with pytest.raises(ILReError, match="another architecture"):
        ILRe.from_pretrained(profile=path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ILReError, match="cannot read the profile"):
        Profile.load(tmp_path / "broken.json")
    newer = json.loads(shipped.to_json()) | {"format_version": 2}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ILReError, match="upgrade ilre"):
        Profile.load(tmp_path / "newer.json")


def test_cli_calibrates_and_writes_a_profile(tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "ilre_engine.cli", "calibrate"),
            *("--lengths", "1k", "--samples", "2", "--families", "niah_single,niah_multikey"),
            *("--layers", "3-6", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    profile = Profile.load(out)
    assert profile.model_name == "gemma3-270m" and 3 <= profile.layer <= 6
    # The prior's weight and passages are measured at the chosen layer: the smallest weight
    # of the best.
    candidates = {f"{w:g}@{s}" for w in HYBRID_WEIGHTS for s in HYBRID_PASSAGE_TOKENS}
    assert set(profile.hybrid_recall) == candidates
    best = max(profile.hybrid_recall.values())
    chosen = f"{profile.hybrid_weight:g}@{profile.hybrid_passage_tokens}"
    assert profile.hybrid_recall[chosen] == best
    assert profile.hybrid_weight == min(
        float(key.split("@")[0]) for key, value in profile.hybrid_recall.items() if value >= best
    )
    assert set(profile.recall) == {"3", "4", "5", "6"}
    assert all(
        0.0 <= v <= 1.0 for by_kernels in profile.recall.values() for v in by_kernels.values()
    )
    # Every set of several kernels is measured dealt over heads and averaged; the profile
    # carries the allocation of the chosen pooling, and an engine applies it.
    assert {"1,5,9,17", "1,5,9,17@average"} <= set(profile.recall["5"])
    chosen = ",".join(map(str, profile.kernel_sizes))
    if profile.kernel_allocation == "average":
        chosen += "@average"
    assert profile.recall[str(profile.layer)][chosen] == max(
        profile.recall[str(profile.layer)].values()
    )
    engine = ILRe.from_pretrained(profile=out)
    assert engine.config.kernel_allocation == profile.kernel_allocation
    assert "<- l_R" in done.stdout and str(out) in done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "ilre_engine.cli", "calibrate", "--families", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown task families" in bad.stderr
