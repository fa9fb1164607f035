#!/usr/bin/env bash
# The released-size diffusion figures on one CUDA GPU, in under 10 minutes (random weights: cost does not
# depend on weight values). Installs what is missing, runs benchmarks/bench_diffusion_engine.py at the released
# sizes (original procedure vs ours vs the fast sampler, same run, same device), then the per-network figures,
# and writes the table to $OUT/gpu_check.md (default OUT: ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh                 # 200 DDIM steps (the original's), fast sampler 20 steps
#   STEPS=50 COMPILE=0 bash benchmarks/gpu_check.sh   # a slower GPU: fewer steps, no torch.compile pass
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_check_out}
PY=${PYTHON:-python3}
STEPS=${STEPS:-200}
FAST_SAMPLER=${FAST_SAMPLER:-dpmsolver++}
FAST_STEPS=${FAST_STEPS:-20}
COMPILE=${COMPILE:-1}
mkdir -p "$OUT"
start=$(date +%s)

# 1. install: torch with CUDA must be there; the rest is installed only when missing (the machine may be offline)
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: needs a CUDA build of torch and a visible GPU ($PY)" >&2
    exit 2
fi
missing=$("$PY" - <<'EOF'
import importlib.util
# what the benchmarks import (not the whole package's requirements: no nnU-Net, TotalSegmentator or BiomedCLIP)
needed = {"numpy": "numpy", "scipy": "scipy", "nibabel": "nibabel", "diffusers": "diffusers", "tqdm": "tqdm",
          "yaml": "PyYAML", "PIL": "pillow"}
print(" ".join(pip for mod, pip in needed.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: installing $missing"
    "$PY" -m pip install -q $missing || { echo "gpu_check: could not install: $missing" >&2; exit 2; }
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# 2. the engine benchmark at the released sizes (tqdm bars go to the .err file)
"$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|diffusers) " > "$OUT/versions.txt" || true
timeout 330 "$PY" benchmarks/bench_diffusion_engine.py --released --device cuda --steps "$STEPS" \
    --fast-sampler "$FAST_SAMPLER" --fast-steps "$FAST_STEPS" > "$OUT/engine.txt" 2> "$OUT/engine.err" \
    || echo "bench_diffusion_engine.py failed or timed out (rc $?); see engine.err" >> "$OUT/engine.txt"

# 3. optional: ours with torch.compile + CUDA graphs ("reduce-overhead"), fewer steps to bound compile + run time
if [ "$COMPILE" = 1 ]; then
    timeout 150 "$PY" benchmarks/bench_diffusion_engine.py --released --device cuda --steps 20 --fast-steps 10 \
        --compile reduce-overhead > "$OUT/engine_compiled.txt" 2> "$OUT/engine_compiled.err" \
        || echo "compiled run failed or timed out (rc $?); see engine_compiled.err" >> "$OUT/engine_compiled.txt"
fi

# 4. one forward per network at the released sizes, fp16 and bf16 autocast against fp32
timeout 80 "$PY" benchmarks/bench_networks.py --device cuda --precision fp32,bf16,fp16 > "$OUT/networks.txt" \
    2> "$OUT/networks.err" || echo "bench_networks.py failed or timed out (rc $?)" >> "$OUT/networks.txt"

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - start )) s"
    echo; echo '```'; head -n 20 "$OUT/nvidia-smi.txt" 2>/dev/null; cat "$OUT/versions.txt"; echo '```'
    echo; echo "## bench_diffusion_engine.py --released --steps $STEPS --fast-steps $FAST_STEPS"
    echo; echo '```'; cat "$OUT/engine.txt"; echo '```'
    if [ -f "$OUT/engine_compiled.txt" ]; then
        echo; echo "## same, --compile reduce-overhead, 20 steps"; echo; echo '```'; cat "$OUT/engine_compiled.txt"; echo '```'
    fi
    echo; echo "## bench_networks.py --precision fp32,bf16,fp16"; echo; echo '```'; cat "$OUT/networks.txt"; echo '```'
} > "$OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
