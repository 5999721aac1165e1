"""Browsing evolution runs for the dashboard.

A RUN_DIR (written by `evomm evolve`) holds `evaluations.jsonl`, `best_recipe.yml`,
`fitness.png`, `genome.png`, `report.md` and `results.json`. The dashboard lists the runs
under one configured root and shows a run's plots, best recipe and results table. Missing
pieces (a run still in progress, an older layout) are reported, not fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from evomm.demo.paths import DemoPathError, file_within, resolve_within

#: A directory is a run when it holds one of these (`summary.json`: a finished multi-stage
#: run whose stages live in sub-directories; `result.json`: a finished stage).
RUN_MARKERS = ("results.json", "summary.json", "result.json", "evaluations.jsonl", "best_recipe.yml")
#: A stage directory (of a multi-stage run) holds one of these.
STAGE_MARKERS = ("evaluations.jsonl", "result.json", "best_recipe.yml")
#: Most bytes the dashboard reads from one text file (bounded, since a root may be large).
MAX_TEXT_BYTES = 2 * 1024 * 1024
#: Preferred row order of the results table (the names `evomm evolve` writes).
MODEL_ORDER = (
    "english_vlm", "japanese_lm", "uniform_50", "best_uniform", "ps", "dfs", "ps_dfs",
    "japanese_parent", "fewstep_parent", "uniform", "evolved",
)


def _is_run(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def list_runs(root: str | Path, max_depth: int = 3) -> list[str]:
    """Runs under `root` as root-relative POSIX names, newest first.

    Only directories inside `root` count (symlinked dirs pointing out are skipped); search
    stops at `max_depth` levels and does not descend into a run.
    """
    base = Path(root).resolve()
    if not base.is_dir():
        return []
    found: list[tuple[float, str]] = []
    frontier = [(base, 0)]
    while frontier:
        directory, depth = frontier.pop()
        if _is_run(directory):
            mtime = max((directory / m).stat().st_mtime for m in RUN_MARKERS if (directory / m).is_file())
            found.append((mtime, directory.relative_to(base).as_posix() or "."))
            continue
        if depth >= max_depth:
            continue
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in children:
            if child.resolve().is_relative_to(base):
                frontier.append((child, depth + 1))
    found.sort(key=lambda item: (-item[0], item[1]))
    return [name for _, name in found]


@dataclass
class RunView:
    """What the dashboard shows for one run; `None` where the run lacks that artifact."""

    name: str
    path: Path
    stages: list[str] = field(default_factory=list)
    stage: str = "."
    fitness_plot: Path | None = None
    genome_plot: Path | None = None
    grid_plot: Path | None = None
    recipe_path: Path | None = None
    recipe_text: str = ""
    dfs_summary: str = ""
    table_headers: list[str] = field(default_factory=list)
    table_rows: list[list[object]] = field(default_factory=list)
    report_md: str = ""
    notes: list[str] = field(default_factory=list)


def _read_text(path: Path | None) -> str:
    if path is None:
        return ""
    with path.open("rb") as handle:
        data = handle.read(MAX_TEXT_BYTES + 1)
    text = data[:MAX_TEXT_BYTES].decode("utf-8", errors="replace")
    return text + ("\n… (truncated)" if len(data) > MAX_TEXT_BYTES else "")


#: Bookkeeping numbers in results.json that are not scores.
NOT_SCORES = frozenset({"n", "seconds", "count", "evaluations"})
#: Preferred column order; other scores follow, then per-type breakdowns (`by_type`).
METRIC_ORDER = ("rougeL", "rougeL_strict", "keyword_acc", "clip_score")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def results_table(results: dict) -> tuple[list[str], list[list[object]]]:
    """`results.json` → (headers, rows): one row per model, one column per score.

    Top-level numbers of each model are scores (bookkeeping like `n` or `seconds` excepted);
    a `by_type` dict adds one column per type (e.g. key-word accuracy per question type).
    """
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not models:
        return [], []
    metrics: list[str] = []
    kinds: list[str] = []
    for scores in models.values():
        if not isinstance(scores, dict):
            continue
        for key, value in scores.items():
            if _number(value) and key not in NOT_SCORES and key not in metrics:
                metrics.append(key)
        for kind, value in (scores.get("by_type") or {}).items():
            if _number(value) and kind not in kinds:
                kinds.append(kind)
    metrics.sort(key=lambda m: METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER))
    order = {name: i for i, name in enumerate(MODEL_ORDER)}
    names = sorted(models, key=lambda n: (order.get(n, len(order)), n))
    rows = []
    for name in names:
        scores = models[name] if isinstance(models[name], dict) else {}
        by_type = scores.get("by_type") if isinstance(scores.get("by_type"), dict) else {}
        row: list[object] = [name]
        row += [round(float(scores[m]), 2) if _number(scores.get(m)) else None for m in metrics]
        row += [round(float(by_type[k]), 1) if _number(by_type.get(k)) else None for k in kinds]
        rows.append(row)
    return ["model", *metrics, *(f"{k} %" for k in kinds)], rows


def dfs_summary(recipe: object) -> str:
    """A one-line description of a DFS path (`{"sources", "path": [[source, layer], ...], "scales"}`)."""
    if not isinstance(recipe, dict):
        return ""
    path, sources = recipe.get("path"), recipe.get("sources")
    if not isinstance(path, list) or not isinstance(sources, list) or not path:
        return ""
    names = [Path(str(s)).name if Path(str(s)).name != "model" else "/".join(Path(str(s)).parts[-2:])
             for s in sources]
    scales = recipe.get("scales") if isinstance(recipe.get("scales"), list) else []
    hops = []
    for i, step in enumerate(path[:64]):
        try:
            source, layer = int(step[0]), int(step[1])
        except (TypeError, ValueError, IndexError):
            return ""
        label = f"{names[source] if 0 <= source < len(names) else source}:{layer}"
        if i < len(scales) and isinstance(scales[i], (int, float)) and abs(scales[i] - 1) > 1e-3:
            label += f" (×{scales[i]:.2f})"
        hops.append(label)
    more = f" → … ({len(path)} layers in all)" if len(path) > 64 else ""
    return f"{len(path)} layers: " + " → ".join(hops) + more


def _stages(path: Path) -> list[str]:
    """Stage names of a run: "." for the run directory itself, then its stage sub-directories."""
    stages = ["."] if any((path / m).is_file() for m in STAGE_MARKERS) else []
    order: list[str] = []
    summary = file_within(path, "summary.json")
    if summary is not None:
        try:
            order = [str(k) for k in json.loads(_read_text(summary))]
        except (json.JSONDecodeError, TypeError):
            order = []
    found = sorted(
        (child for child in path.iterdir()
         if child.is_dir() and child.resolve().is_relative_to(path) and not child.name.startswith(".")
         and any((child / m).is_file() for m in STAGE_MARKERS)),
        key=lambda child: (order.index(child.name) if child.name in order else len(order), child.stat().st_mtime),
    )
    return stages + [child.name for child in found]


def stage_table(path: Path, stages: list[str]) -> tuple[list[str], list[list[object]]]:
    """Best fitness per stage (from each stage's `result.json`) when a run has no results.json."""
    rows = []
    for stage in stages:
        result = file_within(path / stage, "result.json")
        if result is None:
            continue
        try:
            data = json.loads(_read_text(result))
        except json.JSONDecodeError:
            continue
        best = data.get("best_fitness")
        rows.append([path.name if stage == "." else stage, round(float(best), 4) if isinstance(best, (int, float)) else None,
                     data.get("evaluations")])
    return (["stage", "best_fitness", "evaluations"], rows) if rows else ([], [])


def load_run(root: str | Path, name: str, stage: str | None = None) -> RunView:
    """The dashboard view of run `name` under `root` (and one of its stages; default: the last).

    `DemoPathError` if `name` is not a run inside `root`, or `stage` is not one of its stages.
    """
    path = resolve_within(root, name)
    if not path.is_dir() or not _is_run(path):
        raise DemoPathError(f"'{name}' is not a run under the configured runs root.")
    stages = _stages(path)
    if stage in (None, "") and stages:
        stage = stages[-1]
    if stages and stage not in stages:
        raise DemoPathError(f"'{stage}' is not a stage of run '{name}'.")
    stage = stage or "."
    stage_path = path / stage  # inside `path`: `stage` is one of the names found there
    view = RunView(name=name, path=path, stages=stages, stage=stage)
    view.fitness_plot = file_within(stage_path, "fitness.png")
    view.genome_plot = file_within(stage_path, "genome.png")
    view.grid_plot = next(
        (p for p in (file_within(stage_path, "grid.png"), file_within(path, "grid.png"), file_within(path, "report.png"))
         if p), None
    )
    view.recipe_path = file_within(stage_path, "best_recipe.yml")
    view.recipe_text = _read_text(view.recipe_path)
    if view.recipe_text:
        try:
            import yaml

            view.dfs_summary = dfs_summary(yaml.safe_load(view.recipe_text))
        except yaml.YAMLError:
            view.notes.append("best_recipe.yml is not valid YAML.")
    results_path = file_within(path, "results.json")
    if results_path is not None:
        try:
            view.table_headers, view.table_rows = results_table(json.loads(_read_text(results_path)))
        except json.JSONDecodeError:
            view.notes.append("results.json is not valid JSON.")
    if not view.table_rows:
        view.table_headers, view.table_rows = stage_table(path, stages)
    view.report_md = _read_text(file_within(path, "report.md"))
    for label, value in (
        ("fitness.png", view.fitness_plot),
        ("genome.png", view.genome_plot),
        ("best_recipe.yml", view.recipe_path),
    ):
        if value is None:
            view.notes.append(f"This stage has no {label} yet.")
    if results_path is None:
        view.notes.append("This run has no results.json (held-out evaluation) yet.")
    return view
