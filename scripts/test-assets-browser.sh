#!/usr/bin/env bash
# The real browser the report's test opens report.html in: Debian's `chromium` package, headless
# (tests/report_html.rs). Idempotent: installs only when `chromium` is not on PATH (root; apt).
# Not needed by the demo, only by the tests.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "test-assets-browser: installing Debian's chromium (headless browser for the report's test)"
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
