#!/usr/bin/env bash
# Proxy overhead against real vLLM 0.26.0 on a GPU host (no network needed):
#
#   bash bench/gpu/overhead.sh OUT_DIR [overhead.py options...]
#
# Needs vLLM 0.26.0 importable by python3 (the offline bundle on PYTHONPATH, CONTRIBUTING.md#gpu-runs), torch +
# transformers + tokenizers for the random-weight checkpoint, and the proxy's dependencies.
# One vLLM (random-weight Qwen3-0.6B shape, served as `bench-model`), then bench/overhead.py
# with --backend-url: direct vs vllm-switch (LiteLLM only where its executable is given in
# LITELLM). vLLM is stopped by PID at the end.
set -uo pipefail
out=${1:?usage: overhead.sh OUT_DIR [overhead.py options...]}
shift
mkdir -p "$out"
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
ck=${MODELS_DIR:-/tmp/models}/bench-qwen3-0.6b
if [ ! -f "$ck/config.json" ]; then
  python3 bench/make_checkpoint.py "$ck" --shape qwen3-0.6b --vocab 4096 > "$out/checkpoint.log" 2>&1 || { tail -20 "$out/checkpoint.log"; exit 1; }
fi
# vLLM on CPUs 0-11; vllm-switch (--pin: the last CPU the benchmark may use) and the load elsewhere
taskset -c 0-11 python3 -m vllm.entrypoints.openai.api_server --model "$ck" --served-model-name bench-model \
  --max-model-len 2048 --host 127.0.0.1 --port 8001 --gpu-memory-utilization 0.5 > "$out/vllm.log" 2>&1 &
vllm=$!
trap 'kill $vllm 2>/dev/null; wait $vllm 2>/dev/null' EXIT
t0=$(date +%s)
until curl -sf http://127.0.0.1:8001/health > /dev/null; do
  kill -0 $vllm 2>/dev/null || { echo "vLLM exited during start-up"; tail -30 "$out/vllm.log"; exit 1; }
  [ $(( $(date +%s) - t0 )) -gt 300 ] && { echo "start-up timed out"; tail -30 "$out/vllm.log"; exit 1; }
  sleep 2
done
echo "vLLM ready after $(( $(date +%s) - t0 )) s" | tee "$out/startup.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv"
lscpu > "$out/lscpu.txt"
taskset -c 12-15 python3 bench/overhead.py --pin --backend-url http://127.0.0.1:8001 \
  ${LITELLM:+--litellm "$LITELLM"} --rounds "${ROUNDS:-2}" --requests "${REQUESTS:-100}" \
  --per-connection 4 --out "$out/overhead.json" "$@" > "$out/overhead.log" 2>&1
rc=$?
tail -5 "$out/overhead.log"
exit $rc
