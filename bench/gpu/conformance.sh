#!/usr/bin/env bash
# Run tests/conformance against real vLLM 0.26.0 on a GPU host (no network needed).
#
#   bash bench/gpu/conformance.sh OUT_DIR
#
# Needs: vLLM 0.26.0 importable by python3 (e.g. PYTHONPATH from the offline bundle, CONTRIBUTING.md#gpu-runs),
# torch + transformers + tokenizers (for the random-weight checkpoint), pytest, pytest-asyncio,
# pytest-timeout, httpx. Starts two servers of a random-weight Qwen3-0.6B-shape model served as
# `tiny tiny-alias` with --max-model-len 512 (the shape of the recorded transcripts): one with
# VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode, one without dev mode and with --api-key.
# Both are stopped by PID at the end. Logs, GPU facts and the JUnit report go to OUT_DIR.
set -uo pipefail
out=${1:?usage: conformance.sh OUT_DIR}
mkdir -p "$out"
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
unset VLLM_SERVER_DEV_MODE
ck=${MODELS_DIR:-/tmp/models}/tiny-qwen3-v4k
if [ ! -f "$ck/config.json" ]; then
  python3 bench/make_checkpoint.py "$ck" --shape qwen3-0.6b --vocab 4096 > "$out/checkpoint.log" 2>&1 || { tail -20 "$out/checkpoint.log"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv > "$out/gpu-before.csv"
serve() { python3 -m vllm.entrypoints.openai.api_server --model "$ck" --served-model-name tiny tiny-alias --max-model-len 512 --host 127.0.0.1 "$@"; }
VLLM_SERVER_DEV_MODE=1 serve --port 8001 --enable-sleep-mode --gpu-memory-utilization 0.35 > "$out/vllm-dev.log" 2>&1 &
dev=$!
serve --port 8002 --gpu-memory-utilization 0.3 --enforce-eager --api-key sk-conformance > "$out/vllm-nodev.log" 2>&1 &
nodev=$!
trap 'kill $dev $nodev 2>/dev/null; wait $dev $nodev 2>/dev/null' EXIT
t0=$(date +%s)
for port in 8001 8002; do
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
    if ! kill -0 $dev 2>/dev/null || ! kill -0 $nodev 2>/dev/null; then
      echo "a vLLM server exited during start-up"; tail -30 "$out"/vllm-*.log; exit 1
    fi
    if [ $(( $(date +%s) - t0 )) -gt 480 ]; then echo "start-up timed out"; tail -30 "$out"/vllm-*.log; exit 1; fi
    sleep 2
  done
done
echo "both servers ready after $(( $(date +%s) - t0 )) s" | tee "$out/startup.txt"
nvidia-smi --query-gpu=memory.used --format=csv >> "$out/startup.txt"
VLLM_SWITCH_TARGET_URL=http://127.0.0.1:8001 VLLM_SWITCH_TARGET_NODEV_URL=http://127.0.0.1:8002 \
  python3 -m pytest tests/conformance -p no:cacheprovider -rA -o timeout=180 --junitxml="$out/conformance-junit.xml" > "$out/conformance.txt" 2>&1
rc=$?
tail -70 "$out/conformance.txt"
exit $rc
