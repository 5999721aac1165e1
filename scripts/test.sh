#!/usr/bin/env bash
# Install evomm with its test dependencies into .venv at the exact versions of
# requirements-test.lock (the user's requirements.lock plus test tools; torch pinned to the
# wheels on disk), install Debian's Chromium for the browser test, and run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_browser.sh
python3 -m venv .venv
. .venv/bin/activate
pip install -q -c requirements-test.lock -e ".[test]"
python -m pytest -q "$@"
