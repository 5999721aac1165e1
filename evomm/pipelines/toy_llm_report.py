"""Held-out evaluation of the toy EvoLLM-JP run, in the paper's layout (MGSM-JA accuracy).

`write_report(config, run_dir, results)` is the `after_run` hook of
`pipelines/toy_evollm_jp.yml`. Once PS, DFS and PS+DFS are done it answers the held-out
Japanese problems (the zoo's test split, never seen by the search) with

    japanese_lm, math_a, math_b   the sources
    best_uniform   the best hand-set uniform task-arithmetic merge of the three, chosen on the
                   FITNESS split with the evolution's objective, reported on the test split
    ps, dfs, ps_dfs   the evolved models, loaded from disk with `from_pretrained` (DFS models
                   through evomm's registered `DFSForCausalLM`: what was saved is what is scored)

and writes RUN_DIR/results.json (`{"models": {NAME: {"acc", "acc_ja", "by_kind", ...}}}`),
RUN_DIR/report.md (table, example answers side by side, fitness curves, the evolved layer
paths) and RUN_DIR/report.png. Options come from the config's `extras.report`.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import Field

from evomm.errors import ConfigError
from evomm.pipelines.report_common import (MERGED_LABELS, ReportOptionsBase, bar_chart, cell, first_of_each,
                                          read_report_options)
from evomm.search.run import atomic_write_text
from evomm.zoo_math.build import TEMPLATE

MODEL_ORDER = ("japanese_lm", "math_a", "math_b", "best_uniform", "ps", "dfs", "ps_dfs")
LABELS = {
    "japanese_lm": "Japanese LM (source; shisa-gamma's role)",
    "math_a": "English math LM A (source; WizardMath's role)",
    "math_b": "English math LM B (source; Abel's role)",
    **MERGED_LABELS,
}


class ReportOptions(ReportOptionsBase):
    """`extras.report` of the pipeline config."""

    sources: dict[str, str] = Field(default_factory=lambda: {"japanese_lm": "ja", "math_a": "math_a",
                                                                "math_b": "math_b"},
                                    description="report name -> source name, in task-vector order")
    template: str = TEMPLATE
    max_new_tokens: int = Field(64, ge=1)
    uniform_weights: list[float] = Field(default_factory=lambda: [0.5, 1.0])
    objective: str = "acc_ja"


def report_options(config) -> ReportOptions:
    opts = read_report_options(config, ReportOptions)
    for name in [opts.base, *opts.sources.values()]:
        if name not in config.sources:
            raise ConfigError(f"extras.report: {name!r} is not one of sources {sorted(config.sources)}")
    if opts.objective not in ("acc", "acc_ja"):
        raise ConfigError(f"extras.report.objective: acc or acc_ja, got {opts.objective!r}")
    return opts


def uniform_recipe(base: str, models: Sequence[str], weights: Sequence[float]) -> dict[str, Any]:
    """Task arithmetic with one weight per source on every layer."""
    return {"merge_method": "task_arithmetic", "base_model": base,
            "models": [{"model": m, "parameters": {"weight": float(w)}} for m, w in zip(models, weights)]}


def write_report(config, run_dir: str | Path, results: dict[str, dict[str, Any]], log=print) -> dict[str, Any]:
    """Evaluate every model on the held-out split; write results.json, report.md, report.png."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import evomm.models.dfs  # noqa: F401 - registers the DFS config so DFS checkpoints load
    from evomm.search.candidates import CandidateModel
    from evomm.fitness.math_accuracy_ja import sample_problems
    from evomm.zoo_math.evaluate import answer as answer_rows, read_split, score

    run_dir = Path(run_dir)
    opts = report_options(config)
    torch.set_num_threads(config.num_threads)
    paths = config.sources
    data = Path(opts.dataset)
    test = sample_problems(read_split(data / f"{opts.test_split}.jsonl"), opts.n_test, 0)
    fit = sample_problems(read_split(data / f"{opts.fitness_split}.jsonl"), opts.n_fitness, 0)
    shared = {r["question"] for r in fit} & {r["question"] for r in test}
    if shared:
        raise ConfigError(f"extras.report: fitness and test splits share {len(shared)} problems")
    tokenizer = AutoTokenizer.from_pretrained(paths[next(iter(opts.sources.values()))])
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}

    def answer(model, rows) -> list[str]:
        return answer_rows(model, tokenizer, rows, max_new_tokens=opts.max_new_tokens,
                           batch_size=opts.batch_size, template=opts.template)

    def timed(name: str, fn) -> None:
        start = time.perf_counter()
        answers[name] = fn()
        seconds[name] = time.perf_counter() - start
        log(f"[report] {name}: {len(answers[name])} answers in {seconds[name]:.1f}s")

    for name, source in opts.sources.items():
        model = AutoModelForCausalLM.from_pretrained(paths[source], dtype=torch.float32)
        timed(name, lambda: answer(model, test))
        del model

    refs = [paths[s] for s in opts.sources.values()]
    grid = list(itertools.product(opts.uniform_weights, repeat=len(refs)))
    candidate = CandidateModel(uniform_recipe(paths[opts.base], refs, grid[0]))
    grid_scores = []
    start = time.perf_counter()
    for weights in grid:
        preds = answer(candidate.apply(uniform_recipe(paths[opts.base], refs, weights)), fit)
        grid_scores.append({"weights": list(weights), "fitness": score(fit, preds)[opts.objective]})
    best = max(grid_scores, key=lambda g: g["fitness"])["weights"]
    log(f"[report] {len(grid)} uniform merges on {opts.fitness_split} ({opts.objective}) -> best {best} "
        f"({time.perf_counter() - start:.1f}s)")
    timed("best_uniform", lambda: answer(candidate.apply(uniform_recipe(paths[opts.base], refs, best)), test))
    del candidate

    for name, r in results.items():
        if r.get("model"):
            model = AutoModelForCausalLM.from_pretrained(r["model"], dtype=torch.float32)
            timed(name, lambda: answer(model, test))
            del model

    scores = {name: score(test, preds) for name, preds in answers.items()}
    payload = {
        "models": {name: scores[name] | {"seconds": round(seconds[name], 2)} for name in _ordered(scores)},
        "test": {"split": opts.test_split, "n": len(test)},
        "uniform_grid": {"objective": opts.objective, "split": opts.fitness_split, "n": len(fit),
                         "models": list(opts.sources), "scores": grid_scores, "best": best},
        "stages": {name: {"best_fitness": r.get("best_fitness"), "evaluations": r.get("evaluations"),
                          "model": r.get("model")} for name, r in results.items()},
        "seed": config.seed,
    }
    atomic_write_text(run_dir / "results.json", json.dumps(payload, ensure_ascii=False, indent=1))
    plot_scores(payload["models"], run_dir / "report.png")
    atomic_write_text(run_dir / "report.md", render_report(config, payload, test, answers, run_dir, opts.examples))
    log(render_table(payload["models"]))
    log(f"[report] wrote {run_dir / 'report.md'} and {run_dir / 'results.json'}")
    return payload


def _ordered(names) -> list[str]:
    return [n for n in MODEL_ORDER if n in names] + [n for n in names if n not in MODEL_ORDER]


def render_table(models: dict[str, dict[str, Any]]) -> str:
    """One row per model: accuracy, Japanese-only accuracy, and accuracy per problem kind (%)."""
    kinds = sorted({k for m in models.values() for k in (m.get("by_kind") or {})})
    head = ["model", "name", "acc %", "acc_ja %"] + [f"{k} % (ja)" for k in kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        cells = [LABELS.get(name, name), f"`{name}`", f"{m['acc']:.1f}", f"{m['acc_ja']:.1f}"]
        cells += [f"{m['by_kind'][k]['acc']:.0f} ({m['by_kind'][k]['acc_ja']:.0f})" if k in m.get("by_kind", {})
                  else "" for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(config, payload: dict[str, Any], test: Sequence[dict], answers: dict[str, list[str]],
                  run_dir: Path, examples: int) -> str:
    grid = payload["uniform_grid"]
    best_row = max(grid["scores"], key=lambda g: g["fitness"])
    lines = [
        f"# {config.name or 'toy EvoLLM-JP'}: held-out results (seed {config.seed})", "",
        f"{payload['test']['n']} held-out Japanese word problems ({payload['test']['split']} split, never seen by "
        "the search). acc: the last number of the answer is right (Sakana's MGSM scoring); acc_ja: right "
        "and written in Japanese (the paper's column, and the fitness).", "",
        render_table(payload["models"]), "",
        f"`best_uniform`: task arithmetic with weights {grid['best']} ({', '.join(grid['models'])}), the best of "
        f"{len(grid['scores'])} hand-set uniform merges on the {grid['split']} split "
        f"({grid['objective']} {best_row['fitness']:.1f}).", "",
        "Evolution (fitness split, best fitness / evaluations): "
        + "; ".join(f"{name} {s['best_fitness']:.1f} / {s['evaluations']}" for name, s in payload["stages"].items()
                    if s.get("best_fitness") is not None) + ".", "",
        "![scores](report.png)", "",
    ]
    if examples:
        lines += ["## Example answers", ""]
        for i in first_of_each(test, "kind", examples):
            lines += [f"**{test[i].get('kind', '')}**: {test[i]['question']}", "", "| model | answer |", "|---|---|",
                      f"| reference | {test[i].get('answer', test[i]['answer_number'])} |"]
            lines += [f"| `{name}` | {cell(answers[name][i])} |" for name in _ordered(answers)]
            lines.append("")
    lines += ["## Evolution", "", "Fitness per generation, and the best genome (for DFS: the layer path, "
              "one marker per layer, coloured by source, with the scale on each hand-over).", ""]
    for name in payload["stages"]:
        for plot in ("fitness.png", "genome.png"):
            if (run_dir / name / plot).is_file():
                lines += [f"![{name} {plot}]({name}/{plot})", ""]
    return "\n".join(lines)


def plot_scores(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Bars: acc and acc_ja per model."""
    return bar_chart(models, [("acc", "acc %"), ("acc_ja", "acc_ja % (Japanese answers)")], path,
                     "held-out Japanese word problems")
