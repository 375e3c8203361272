#!/usr/bin/env bash
# One lease of the GPU machine for bench/evidence.py, in short commands (each device call is
# one of these; the machine keeps ~/ and /tmp between calls, not the working tree):
#
#   bash bench/gpu/lease.sh part N        copy bundle part N (.gpu/b/pN, carried) to ~/stage
#                                         (part 1 also starts the checkpoints in the background)
#   bash bench/gpu/lease.sh install       the last part: vLLM 0.26.0 into ~/site, the proxy's and
#                                         the tests' wheels (.gpu/b/p4/extra) into ~/extra
#   bash bench/gpu/lease.sh launch SECS   a copy of the tree in /tmp/proj, bench/evidence.py
#                                         detached (setsid) with a deadline of SECS
#   bash bench/gpu/lease.sh wait SECS     until the run ended or SECS passed; OUT/ev.tar.gz
#
# The bundle: `bash ../shared/gpu/make-vllm-bundle.sh .gpu/bundle`, re-split into four parts of
# at most 54 MB so that each travels with the working tree under the 64 MiB limit (see
# docs/benchmarks.md, "Running the GPU evidence").
set -uo pipefail
run=/tmp/run  # the copy of the tree the evidence runs from (the working tree is replaced per call)
export PYTHONPATH=$HOME/site:$HOME/extra:$run HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MODELS_DIR=/tmp/models
ev=/tmp/ev
case "${1:?usage: lease.sh part N | install | launch SECS | wait SECS}" in
  part)
    mkdir -p ~/stage && cp -r ".gpu/b/p$2/." ~/stage/ && ls -la ~/stage | tail -3
    if [ "$2" = 1 ]; then
      rm -rf /tmp/ck-src && mkdir -p /tmp/ck-src /tmp/models && cp bench/make_checkpoint.py /tmp/ck-src/
      nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
      (cd /tmp/ck-src && for s in qwen3-0.6b llama-3.2-1b qwen3-4b tools; do
        if [ "$s" = tools ]; then a=(--shape qwen3-0.6b --tool-tokens); else a=(--shape "$s"); fi
        setsid python3 make_checkpoint.py "/tmp/models/ev-$s" \
          "${a[@]}" > "/tmp/models/ev-$s.log" 2>&1 < /dev/null &
      done)
      echo "checkpoints started"
    fi
    ;;
  install)
    rm -rf "$run" && cp -r . "$run" && rm -rf "$run/.gpu"  # for the import check below
    cp -r .gpu/b/p4/. ~/stage/ && mkdir -p ~/extra
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target ~/extra ~/stage/extra/*.whl || exit 1
    bash ~/stage/install.sh ~/site || exit 1
    python3 -c "import vllm, psutil, pynvml, pytest, pytest_asyncio, looptime, httpx, uvloop, yaml, proxy; print('imports ok')"
    tail -3 /tmp/models/*.log
    ;;
  launch)
    rm -rf "$run" "$ev" && mkdir -p "$ev" && cp -r . "$run" && rm -rf "$run/.gpu"
    (cd "$run" && setsid python3 bench/evidence.py "$ev" --deadline-s "${2:?}" > "$ev/evidence.log" 2>&1 < /dev/null &)
    echo "launched"
    ;;
  wait)
    end=$((SECONDS + ${2:?}))
    while [ $SECONDS -lt $end ] && ! grep -q '"stage": "end"' "$ev/progress.json" 2>/dev/null; do
      sleep 5  # waiting on a detached run, bounded by SECS
    done
    nvidia-smi --query-gpu=memory.used --format=csv,noheader > "$ev/gpu-used-at-pack.txt" 2>&1
    # server logs can be large: their first and last lines travel; everything else as is
    mkdir -p /tmp/pack && rm -rf /tmp/pack/ev && cp -r "$ev" /tmp/pack/ev
    find /tmp/pack/ev -name '*.log' -size +400k | while read -r f; do
      { head -c 100000 "$f"; echo; echo "[... cut ...]"; tail -c 250000 "$f"; } > "$f.cut" && mv "$f.cut" "$f"
    done
    tar -czf "$OUT/ev.tar.gz" -C /tmp/pack ev && ls -la "$OUT"
    cat "$ev/progress.json" 2>/dev/null
    tail -5 "$ev/evidence.log"
    ;;
esac
