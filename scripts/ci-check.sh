#!/usr/bin/env bash
# CI step 2 of 2: lint, format, types, import contracts, then the README's test command (pytest)
# with branch coverage. Fails on any failure, including pytest's exit code 5 ("no tests
# collected"). Run from anywhere, after scripts/ci-install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ruff check .
ruff format --check .
mypy
lint-imports --no-cache  # the layer contracts in pyproject.toml
set +e
pytest -p no:cacheprovider --cov --cov-branch --cov-report=term
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
