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

#: A directory is a run when it holds one of these.
RUN_MARKERS = ("evaluations.jsonl", "results.json", "best_recipe.yml")
#: Most files a dashboard reads from a run (bounded, since a root may be large).
MAX_TEXT_BYTES = 2 * 1024 * 1024
#: Preferred row order of the results table (the names `evomm evolve` writes).
MODEL_ORDER = ("english_vlm", "japanese_lm", "uniform_50", "best_uniform", "ps", "dfs", "ps_dfs")
DFS_PLOT_NAMES = ("dfs_path.png", "dfs.png")


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
    fitness_plot: Path | None = None
    genome_plot: Path | None = None
    dfs_plot: Path | None = None
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


def results_table(results: dict) -> tuple[list[str], list[list[object]]]:
    """`results.json` → (headers, rows): one row per model, one column per metric."""
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not models:
        return [], []
    metrics: list[str] = []
    for scores in models.values():
        if isinstance(scores, dict):
            for key, value in scores.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in metrics:
                    metrics.append(key)
    order = {name: i for i, name in enumerate(MODEL_ORDER)}
    names = sorted(models, key=lambda n: (order.get(n, len(order)), n))
    rows = []
    for name in names:
        scores = models[name] if isinstance(models[name], dict) else {}
        row: list[object] = [name]
        for metric in metrics:
            value = scores.get(metric)
            row.append(round(float(value), 2) if isinstance(value, (int, float)) else None)
        rows.append(row)
    return ["model", *metrics], rows


def dfs_summary(recipe: object) -> str:
    """A one-paragraph description of a DFS path found in a recipe, if it has one.

    Looks for a list of layer slots under a key containing "dfs" / "path" / "layers"; the
    engine's exact recipe keys are free to change without breaking the dashboard.
    """
    found = _find_dfs(recipe)
    if not found:
        return ""
    key, value = found
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:64])
        more = f", … ({len(value)} in all)" if len(value) > 64 else ""
        return f"`{key}`: {shown}{more}"
    return f"`{key}`: {value}"


def _find_dfs(node: object, depth: int = 0) -> tuple[str, object] | None:
    if depth > 6:
        return None
    if isinstance(node, dict):
        for key, value in node.items():
            lowered = str(key).lower()
            if ("dfs" in lowered or lowered in {"path", "layer_path", "layers_path"}) and isinstance(
                value, (list, str)
            ):
                return str(key), value
        for value in node.values():
            hit = _find_dfs(value, depth + 1)
            if hit:
                return hit
    elif isinstance(node, list):
        for value in node:
            hit = _find_dfs(value, depth + 1)
            if hit:
                return hit
    return None


def load_run(root: str | Path, name: str) -> RunView:
    """The dashboard view of run `name` under `root`; `DemoPathError` if it is not a run there."""
    path = resolve_within(root, name)
    if not path.is_dir() or not _is_run(path):
        raise DemoPathError(f"'{name}' is not a run under the configured runs root.")
    view = RunView(name=name, path=path)
    view.fitness_plot = file_within(path, "fitness.png")
    view.genome_plot = file_within(path, "genome.png")
    view.dfs_plot = next((p for n in DFS_PLOT_NAMES if (p := file_within(path, n))), None)
    view.recipe_path = file_within(path, "best_recipe.yml")
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
    view.report_md = _read_text(file_within(path, "report.md"))
    for label, value in (
        ("fitness.png", view.fitness_plot),
        ("genome.png", view.genome_plot),
        ("best_recipe.yml", view.recipe_path),
        ("results.json", results_path),
    ):
        if value is None:
            view.notes.append(f"This run has no {label} yet.")
    return view
