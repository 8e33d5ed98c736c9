#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the console's browser tests: installs the packages
# `chromium` and `chromium-driver` with apt if /usr/bin/chromium or /usr/bin/chromedriver is
# missing, then prints CHROMIUM=... and CHROMEDRIVER=... (stdout carries only those lines).
set -euo pipefail
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (apt)" >&2
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq >&2 || true
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi
echo "CHROMIUM=/usr/bin/chromium"
echo "CHROMEDRIVER=/usr/bin/chromedriver"
