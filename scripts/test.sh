#!/usr/bin/env bash
# Install evomm with its test dependencies into .venv (torch pinned to the wheels on disk) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q -c constraints.txt -e ".[test]"
python -m pytest -q "$@"
