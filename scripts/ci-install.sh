#!/usr/bin/env bash
# CI step 1 of 2: install what the checks need - the project with its dev tools (the README's
# test command's first half), Node 20 + the openai npm package, and the system packages of the
# process tests (a real Prometheus + promtool, docker-compose to validate deploy/, wrk for the
# overhead benchmark's smoke test, headless Chromium + chromedriver for the operator page's
# browser test). Idempotent: skips what is already there. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -e '.[dev]'
apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  apt_install nodejs npm
fi
missing=()
for tool in prometheus:prometheus promtool:prometheus docker-compose:docker-compose wrk:wrk \
  chromium:chromium chromedriver:chromium-driver; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
fi
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error  # the README's test command
