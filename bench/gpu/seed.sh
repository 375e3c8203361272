#!/usr/bin/env bash
# The seed experiment through vllm-switch on a GPU host, in one command:
#
#   bash bench/gpu/seed.sh OUT_DIR [UTIL_A UTIL_B]
#
# Needs vLLM 0.26.0 importable by python3 (e.g. the offline bundle, CONTRIBUTING.md#gpu-runs) plus torch,
# transformers, tokenizers. Makes random-weight checkpoints (Qwen3-0.6B shape and a ~2B shape;
# pass real model directories via MODEL_A / MODEL_B instead), runs the switching phases, then the
# reload baseline (which needs the GPU to itself), and writes OUT_DIR/seed.json.
set -euo pipefail
out=${1:?usage: seed.sh OUT_DIR [UTIL_A UTIL_B]}
util_a=${2:-0.5}
util_b=${3:-0.5}
mkdir -p "$out"
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
models=${MODELS_DIR:-/tmp/models}
model_a=${MODEL_A:-$models/bench-0.6b}
model_b=${MODEL_B:-$models/bench-2b}
[ -f "$model_a/config.json" ] || python3 "$here/make_checkpoint.py" "$model_a" --shape qwen3-0.6b
[ -f "$model_b/config.json" ] || python3 "$here/make_checkpoint.py" "$model_b" --shape 2b
args=(--model-a "$model_a" --model-b "$model_b" --util-a "$util_a" --util-b "$util_b" --logdir "$out/logs" --out "$out/seed.json")
python3 "$here/seed_experiment.py" "${args[@]}" --phases bootstrap,raw,switch_l1,switch_l2,nowarmup,stampede,ttft
python3 "$here/seed_experiment.py" "${args[@]}" --phases reload
