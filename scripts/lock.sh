#!/usr/bin/env bash
# Refresh the locks the README's commands install from, to the newest releases that fit
# pyproject.toml (torch/torchvision held at the wheels in constraints.txt):
#   requirements.lock       every package `pip install -e ".[all]"` needs, exact versions
#   requirements-test.lock  the same, plus the test-only packages (pytest, mergekit, playwright);
#                           resolved *inside* requirements.lock, so a test tool can never move
#                           a version evomm itself imports (it fails here instead)
# Then run `bash scripts/test.sh` and the README's main command before committing the locks.
# Extra arguments go to both `uv pip compile` calls (e.g. `--upgrade-package transformers==5.24.0`
# to hold one package back).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION="0.13.9"
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    python3 -m pip install -q "uv==$UV_VERSION"
fi
common=(--universal --upgrade --quiet -c constraints.txt "$@")
uv pip compile pyproject.toml --extra all "${common[@]}" -o requirements.lock
uv pip compile pyproject.toml --extra test -c requirements.lock "${common[@]}" -o requirements-test.lock
echo "lock: $(grep -c '==' requirements.lock) pins in requirements.lock," \
     "$(grep -c '==' requirements-test.lock) in requirements-test.lock"
grep -E '^(torch|torchvision|transformers|diffusers|gradio|ray|accelerate|open-clip-torch)==' requirements.lock
