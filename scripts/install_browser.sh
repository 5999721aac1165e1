#!/usr/bin/env bash
# Install Debian's Chromium (and a Japanese font, so screenshots show kana/kanji) for the
# browser test (tests/test_demo_browser.py). Idempotent: does nothing when both are present.
# Playwright drives this system Chromium; never run `playwright install` (no downloads).
set -euo pipefail

have_chromium() { [ -x /usr/bin/chromium ]; }
have_ja_font() { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=ja 2>/dev/null | head -n 1)" ]; }

if have_chromium && have_ja_font; then
    echo "install_browser: /usr/bin/chromium and a Japanese font are present; nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install_browser: need root (or sudo) to apt-get install chromium" >&2; exit 1
    fi
fi

packages=()
have_chromium || packages+=(chromium)
have_ja_font || packages+=(fonts-ipafont-gothic)

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${packages[@]}"

/usr/bin/chromium --version
