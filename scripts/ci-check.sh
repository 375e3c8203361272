#!/usr/bin/env bash
# CI step 2 of 2: lint, format, types, import contracts, the wheel in a fresh venv (the demo
# served from it), then the README's test command (pytest)
# with branch coverage. Fails on any failure, including pytest's exit code 5 ("no tests
# collected"). Run from anywhere, after scripts/ci-install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ruff check .
ruff format --check .
mypy
lint-imports --no-cache  # the layer contracts in pyproject.toml

# The wheel a user installs (vllm-switch is not on PyPI): built from this tree, installed in a
# fresh venv (its dependencies from PyPI), and `vllm-switch demo` run from it must answer a chat
# completion. Catches what the editable install hides: a module or package-data file missing
# from the wheel, an import of a dev-only package. About a minute; stopped by its PID.
wheel_work=""
wheel_pid=""
wheel_cleanup() {
  if [ -n "$wheel_pid" ]; then kill -TERM "$wheel_pid" 2>/dev/null || true; fi
  if [ -n "$wheel_work" ]; then rm -rf "$wheel_work"; fi
  wheel_pid=""
  wheel_work=""
}
trap wheel_cleanup EXIT
wheel_smoke() {
  local work port="" deadline answer
  work=$(mktemp -d)
  wheel_work=$work
  mkdir "$work/src"
  # the tree as git sees it (tracked and new files, nothing ignored): no stale build/ in it
  git ls-files -z --cached --others --exclude-standard \
    | tar -cf - --null -T - | tar -xf - -C "$work/src"
  python -m build --wheel --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; return 1; }
  python -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work"/dist/*.whl
  # from an empty folder, so that `python -m proxy` cannot pick this checkout's sources
  (cd "$work" && exec "$work/venv/bin/vllm-switch" demo --port 0 >"$work/demo.log" 2>&1) &
  wheel_pid=$!
  deadline=$((SECONDS + 60))
  until [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do
    port=$(sed -n 's|^vllm-switch demo is up: http://127.0.0.1:\([0-9]*\)/v1$|\1|p' "$work/demo.log")
    if ! kill -0 "$wheel_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "wheel smoke: the demo never became ready:" >&2
      tail -n 40 "$work/demo.log" >&2
      return 1
    fi
    sleep 0.5  # polling another process's start-up, bounded by the deadline above
  done
  answer=$(curl -s --max-time 60 "http://127.0.0.1:$port/v1/chat/completions" \
    -H 'content-type: application/json' \
    -d '{"model": "small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}' \
    || true)
  case "$answer" in
    *'"chat.completion"'*) ;;
    *) echo "wheel smoke: unexpected answer: $answer" >&2; return 1 ;;
  esac
  kill -TERM "$wheel_pid"
  wait "$wheel_pid" || { echo "wheel smoke: the demo did not exit 0 on SIGTERM" >&2; return 1; }
  wheel_pid=""
  echo "wheel smoke: $(basename "$work"/dist/*.whl) served the demo from a fresh venv"
}
wheel_smoke
wheel_cleanup
set +e
pytest -p no:cacheprovider --cov --cov-branch --cov-report=term
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
