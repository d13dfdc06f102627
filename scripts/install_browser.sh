#!/usr/bin/env bash
# Install headless Debian Chromium (+ chromedriver) for the browser tests (tests/browser.py).
# Idempotent: does nothing when both are already on PATH. CI calls this before `pytest -m slow`.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium already installed: $(chromium --version 2>/dev/null || echo unknown)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium chromium-driver
chromium --version
