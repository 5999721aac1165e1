"""Summarise several toy EvoVLM-JP runs (one per seed): mean and spread of every measure.

    python -m evomm.pipelines.toy_results runs/toy_s0 runs/toy_s1 runs/toy_s2

reads each RUN_DIR/results.json and prints a markdown table (mean ± sample standard deviation
over the runs, and min-max) in the layout of the report, used for docs/toy_results.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Sequence

from evomm.errors import EvommError
from evomm.pipelines.toy_vlm_report import LABELS, MODEL_ORDER


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    runs = []
    for run in run_dirs:
        path = Path(run) / "results.json"
        if not path.is_file():
            raise EvommError(f"{path}: not found (run `evomm evolve pipelines/toy_evovlm_jp.yml --out {run}` first)")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    return runs


def _stat(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def summary_table(runs: list[dict]) -> str:
    """One row per model: mean ± sd over runs of ROUGE-L, strict ROUGE-L, key-word accuracy, per type."""
    names = [n for n in MODEL_ORDER if all(n in r["models"] for r in runs)]
    types = sorted({t for r in runs for m in r["models"].values() for t in (m.get("by_type") or {})})
    head = ["model", "ROUGE-L", "ROUGE-L (strict)", "key-word acc. %", "key-word min-max"] + [f"{t} %" for t in types]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        rows = [r["models"][name] for r in runs]
        acc = [m["keyword_acc"] for m in rows]
        cells = [f"{LABELS.get(name, name)} (`{name}`)", _stat([m["rougeL"] for m in rows]),
                 _stat([m["rougeL_strict"] for m in rows]), _stat(acc), f"{min(acc):.1f}-{max(acc):.1f}"]
        cells += [_stat([m["by_type"][t] for m in rows]) for t in types]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(runs: list[dict]) -> str:
    """Key-word accuracy / ROUGE-L of every model for every seed."""
    names = [n for n in MODEL_ORDER if all(n in r["models"] for r in runs)]
    head = ["model"] + [f"seed {r.get('seed', i)}" for i, r in enumerate(runs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        lines.append("| " + " | ".join([f"`{name}`"] + [
            f"{r['models'][name]['keyword_acc']:.1f} / {r['models'][name]['rougeL']:.1f}" for r in runs]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m evomm.pipelines.toy_results RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    try:
        runs = load_runs(argv)
    except EvommError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(runs))
    print()
    print("key-word accuracy / ROUGE-L per seed:")
    print()
    print(per_seed_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
