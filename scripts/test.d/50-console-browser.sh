#!/usr/bin/env bash
# The web console in a real headless Chromium (Debian's chromium and chromium-driver, installed
# by scripts/toolchains/chromium.sh), driven through WebDriver by scripts/console/browser_test.py
# against a real `communesync serve` with tablets syncing real records. Screenshots of each page
# go to target/console-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/toolchains/chromium.sh)"
# Same feature set as the test build: nothing rebuilt.
cargo build -q --workspace --all-targets
python3 scripts/console/browser_test.py target/debug/communesync "$CHROMEDRIVER" "$CHROMIUM" target
