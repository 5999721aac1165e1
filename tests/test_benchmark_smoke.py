"""The GPU benchmark runs end to end at toy size on the CPU (so it works when a GPU is lent)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_at_toy_size_on_the_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_candidate.py"), "--scale", "tiny",
                          "--device", "cpu", "--reps", "1"], capture_output=True, text=True, timeout=300, check=True)
    rows = {row["part"]: row for row in map(json.loads, [l for l in out.stdout.splitlines() if l.startswith("{")])}
    assert set(rows) == {"ps", "dfs", "sdxl"}
    assert rows["ps"]["candidate_s"] > 0 and rows["ps"]["state_gib"] > rows["ps"]["model_gib"]
    assert rows["dfs"]["new_tokens_per_s"] > 0 and rows["dfs"]["path_length"] == 24
