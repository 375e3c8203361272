#!/usr/bin/env bash
# Run tests/conformance against real vLLM 0.26.0 on a GPU host (no network needed).
#
#   bash bench/gpu/conformance.sh OUT_DIR
#
# Needs: vLLM 0.26.0 importable by python3 (e.g. PYTHONPATH from the offline bundle, CONTRIBUTING.md#gpu-runs),
# torch + transformers + tokenizers (for the random-weight checkpoint), pytest, pytest-asyncio,
# pytest-timeout, httpx. Starts four servers of a random-weight Qwen3-0.6B-shape model with
# --max-model-len 512 (the shape of the recorded transcripts): `tiny tiny-alias` with
# VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode; the same without dev mode and with --api-key;
# a pooling model (`tiny-embed`, --runner pooling --convert embed, dev + sleep mode); auto tool
# choice (`tiny-tools`, --enable-auto-tool-choice --tool-call-parser hermes, from a checkpoint
# whose tokenizer has the <tool_call> tokens hermes looks up). All are stopped by PID at the
# end. Logs, GPU facts, the JUnit report and the new routes' transcripts
# (bench/gpu/record_routes.py) go to OUT_DIR. bench/evidence.py runs the same servers.
set -uo pipefail
out=${1:?usage: conformance.sh OUT_DIR}
mkdir -p "$out"
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
unset VLLM_SERVER_DEV_MODE
ck=${MODELS_DIR:-/tmp/models}/tiny-qwen3-v4k
if [ ! -f "$ck/config.json" ]; then
  python3 bench/make_checkpoint.py "$ck" --shape qwen3-0.6b --vocab 4096 > "$out/checkpoint.log" 2>&1 || { tail -20 "$out/checkpoint.log"; exit 1; }
fi
tk=${MODELS_DIR:-/tmp/models}/tiny-qwen3-v4k-tools
if [ ! -f "$tk/checkpoint.json" ]; then
  python3 bench/make_checkpoint.py "$tk" --shape qwen3-0.6b --vocab 4096 --tool-tokens >> "$out/checkpoint.log" 2>&1 || { tail -20 "$out/checkpoint.log"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv > "$out/gpu-before.csv"
serve() { python3 -m vllm.entrypoints.openai.api_server --model "$ck" --served-model-name tiny tiny-alias --max-model-len 512 --host 127.0.0.1 "$@"; }
VLLM_SERVER_DEV_MODE=1 serve --port 8001 --enable-sleep-mode --gpu-memory-utilization 0.35 > "$out/vllm-dev.log" 2>&1 &
dev=$!
serve --port 8002 --gpu-memory-utilization 0.1 --enforce-eager --api-key sk-conformance > "$out/vllm-nodev.log" 2>&1 &
nodev=$!
VLLM_SERVER_DEV_MODE=1 python3 -m vllm.entrypoints.openai.api_server --model "$ck" --served-model-name tiny-embed \
  --runner pooling --convert embed --enable-sleep-mode --enforce-eager --max-model-len 512 --host 127.0.0.1 \
  --port 8003 --gpu-memory-utilization 0.1 > "$out/vllm-pooling.log" 2>&1 &
pooling=$!
VLLM_SERVER_DEV_MODE=1 python3 -m vllm.entrypoints.openai.api_server --model "$tk" --served-model-name tiny-tools \
  --enable-auto-tool-choice --tool-call-parser hermes --enable-sleep-mode --enforce-eager --max-model-len 512 \
  --host 127.0.0.1 --port 8004 --gpu-memory-utilization 0.1 > "$out/vllm-tools.log" 2>&1 &
tools=$!
pids="$dev $nodev $pooling $tools"
trap 'kill $pids 2>/dev/null; wait $pids 2>/dev/null' EXIT
t0=$(date +%s)
for port in 8001 8002 8003 8004; do
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
    if ! kill -0 $pids 2>/dev/null; then
      echo "a vLLM server exited during start-up"; tail -30 "$out"/vllm-*.log; exit 1
    fi
    if [ $(( $(date +%s) - t0 )) -gt 480 ]; then echo "start-up timed out"; tail -30 "$out"/vllm-*.log; exit 1; fi
    sleep 2
  done
done
echo "all four servers ready after $(( $(date +%s) - t0 )) s" | tee "$out/startup.txt"
nvidia-smi --query-gpu=memory.used --format=csv >> "$out/startup.txt"
VLLM_SWITCH_TARGET_URL=http://127.0.0.1:8001 VLLM_SWITCH_TARGET_NODEV_URL=http://127.0.0.1:8002 \
VLLM_SWITCH_TARGET_POOLING_URL=http://127.0.0.1:8003 VLLM_SWITCH_TARGET_TOOLS_URL=http://127.0.0.1:8004 \
  python3 -m pytest tests/conformance -p no:cacheprovider -rA -o timeout=180 --junitxml="$out/conformance-junit.xml" > "$out/conformance.txt" 2>&1
rc=$?
python3 bench/gpu/record_routes.py --dev http://127.0.0.1:8001 --pooling http://127.0.0.1:8003 \
  --tools http://127.0.0.1:8004 --out "$out/vllm026-routes-h200.json" > "$out/record-routes.txt" 2>&1 || rc=1
tail -70 "$out/conformance.txt"
exit $rc
