"""Held-out evaluation of the toy EvoVLM-JP run: the paper's table, on the zoo's test split.

`write_report(config, run_dir, results)` is the `after_run` hook of
`pipelines/toy_evovlm_jp.yml`. Once the PS, DFS and PS+DFS stages are done it answers the
held-out Japanese questions with

    english_vlm   the English VLM parent (image + Japanese question)
    japanese_lm   the Japanese LM parent, text only (it cannot see the image)
    uniform_50    task arithmetic with weight 0.5 for both parents on every layer
    best_uniform  the best of a small grid of hand-set uniform weights, chosen on the FITNESS
                  split with the evolution's own objective, reported on the test split
    ps, dfs, ps_dfs   the evolved models, loaded from disk with
                  LlavaForConditionalGeneration.from_pretrained (so the saved checkpoints are
                  what is measured)

and writes RUN_DIR/results.json (`{"models": {NAME: {"rougeL", "rougeL_strict",
"keyword_acc", "by_type", ...}}}`), RUN_DIR/report.md (table, example answers, plots) and
RUN_DIR/report.png, and prints the table. Options come from the config's `extras.report`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import Field

from evomm.errors import ConfigError
from evomm.pipelines.report_common import (MERGED_LABELS, ReportOptionsBase, bar_chart, cell, first_of_each,
                                          read_report_options)
from evomm.models.vlm import format_question
from evomm.fitness.vqa_rouge_ja import (
    AnswerScorer, PromptVLMGenerator, DEFAULT_PROMPT, load_processor, load_records,
    sample_records,
)
from evomm.search.run import atomic_write_text

MODEL_ORDER = ("english_vlm", "japanese_lm", "uniform_50", "best_uniform", "ps", "dfs", "ps_dfs")
LABELS = {
    "english_vlm": "English VLM (parent)",
    "japanese_lm": "Japanese LM (parent, text only)",
    "uniform_50": "uniform merge 50/50",
    **MERGED_LABELS,
}


class ReportOptions(ReportOptionsBase):
    """`extras.report` of the pipeline config."""

    lang: str = "ja"
    vlm: str = "vlm"
    lm: str = "ja"
    prompt: str = DEFAULT_PROMPT
    text_prompt: str = "USER: {question} ASSISTANT:"
    max_new_tokens: int = Field(40, ge=1)
    uniform_grid: list[tuple[float, float]] = Field(default_factory=lambda: [(0.5, 0.5), (1.0, 1.0)])
    objective: str | None = Field(None, description="default: the first stage's fitness objective")


def report_options(config) -> ReportOptions:
    opts = read_report_options(config, ReportOptions)
    for key in ("vlm", "lm", "base"):
        if getattr(opts, key) not in config.sources:
            raise ConfigError(f"extras.report.{key}: {getattr(opts, key)!r} is not one of sources {sorted(config.sources)}")
    return opts


# -- answering -------------------------------------------------------------------------------
@torch.inference_mode()
def answer_text_only(model, tokenizer, rows: Sequence[dict], prompt: str, max_new_tokens: int,
                     batch_size: int) -> list[str]:
    """Greedy answers of a causal LM to the questions alone (no image)."""
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        texts = [format_question(prompt, r["question"], None) for r in chunk]
        inputs = tokenizer(texts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        answers += [a.strip() for a in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                              skip_special_tokens=True)]
    return answers


class Answerer:
    """Image + question answers of any LLaVA model with the run's processor and prompt."""

    def __init__(self, processor, opts: ReportOptions) -> None:
        self.processor = processor
        self.opts = opts
        self._generator = None

    def __call__(self, model, rows: Sequence[dict]) -> list[str]:
        if self._generator is None:
            self._generator = PromptVLMGenerator(
                model, self.processor, prompt=self.opts.prompt,
                generation={"max_new_tokens": self.opts.max_new_tokens, "batch_size": self.opts.batch_size})
        return self._generator.with_model(model).generate([r["question"] for r in rows], [r["pil"] for r in rows])


def uniform_recipe(base: str, vlm: str, lm: str, w_vlm: float, w_lm: float) -> dict[str, Any]:
    """Task arithmetic with one weight per parent on every layer (vision tower from the VLM)."""
    return {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [{"model": vlm, "parameters": {"weight": float(w_vlm)}},
                   {"model": lm, "parameters": {"weight": float(w_lm)}}],
        "evomm": {"keep_from": vlm},
    }


def _objective(config, opts: ReportOptions) -> str:
    if opts.objective:
        return opts.objective
    fitness = config.stages[0].fitness
    return str((fitness.options if fitness else {}).get("objective", "rougeL"))


# -- the hook --------------------------------------------------------------------------------
def write_report(config, run_dir: str | Path, results: dict[str, dict[str, Any]],
                 log=print) -> dict[str, Any]:
    """Evaluate every model on the held-out split; write results.json, report.md, report.png."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    import evomm.models.dfs  # noqa: F401 - registers the DFS config so DFS LLaVAs load
    from evomm.search.candidates import CandidateModel

    run_dir = Path(run_dir)
    opts = report_options(config)
    torch.set_num_threads(config.num_threads)
    sources = config.sources
    test = sample_records(load_records(opts.dataset, opts.test_split, lang=opts.lang), opts.n_test, seed=0)
    fit = sample_records(load_records(opts.dataset, opts.fitness_split, lang=opts.lang), opts.n_fitness, seed=0)
    _check_disjoint(fit, test)
    scorer = AnswerScorer()
    answer = Answerer(load_processor(sources[opts.vlm]), opts)
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        start = time.perf_counter()
        answers[name] = fn()
        seconds[name] = time.perf_counter() - start
        log(f"[report] {name}: {len(answers[name])} answers in {seconds[name]:.1f}s")

    vlm = LlavaForConditionalGeneration.from_pretrained(sources[opts.vlm]).eval()
    timed("english_vlm", lambda: answer(vlm, test))
    del vlm
    lm = AutoModelForCausalLM.from_pretrained(sources[opts.lm]).eval()
    tokenizer = AutoTokenizer.from_pretrained(sources[opts.lm])
    timed("japanese_lm", lambda: answer_text_only(lm, tokenizer, test, opts.text_prompt,
                                                  opts.max_new_tokens, opts.batch_size))
    del lm

    # uniform merges: one model in memory, each grid point written in place
    recipe = lambda w: uniform_recipe(sources[opts.base], sources[opts.vlm], sources[opts.lm], *w)  # noqa: E731
    candidate = CandidateModel(recipe((0.5, 0.5)))
    objective = _objective(config, opts)
    grid_scores = []
    start = time.perf_counter()
    for w in opts.uniform_grid:
        preds = answer(candidate.apply(recipe(w)), fit)
        grid_scores.append({"weights": list(w), "fitness": scorer.objective(objective, fit, preds)})
    best_w = tuple(max(grid_scores, key=lambda g: g["fitness"])["weights"])
    log(f"[report] uniform grid on {opts.fitness_split} ({objective}): "
        + ", ".join(f"{g['weights']}: {g['fitness']:.1f}" for g in grid_scores)
        + f" -> best {list(best_w)} ({time.perf_counter() - start:.1f}s)")
    timed("uniform_50", lambda: answer(candidate.apply(recipe((0.5, 0.5))), test))
    timed("best_uniform", lambda: answer(candidate.apply(recipe(best_w)), test))
    del candidate

    stage_models = {name: r["model"] for name, r in results.items() if r.get("model")}
    for name, path in stage_models.items():
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        timed(name, lambda: answer(model, test))
        del model

    scores = {name: scorer.all(test, preds) for name, preds in answers.items()}
    payload = {
        "models": {name: scores[name] | {"seconds": round(seconds[name], 2)} for name in _ordered(scores)},
        "test": {"split": opts.test_split, "lang": opts.lang, "n": len(test)},
        "uniform_grid": {"objective": objective, "split": opts.fitness_split, "n": len(fit),
                         "scores": grid_scores, "best": list(best_w)},
        "stages": {name: {"best_fitness": r.get("best_fitness"), "evaluations": r.get("evaluations"),
                          "model": r.get("model")} for name, r in results.items()},
        "seed": config.seed,
    }
    atomic_write_text(run_dir / "results.json", json.dumps(payload, ensure_ascii=False, indent=1))
    plot_scores(payload["models"], run_dir / "report.png")
    markdown = render_report(config, payload, test, answers, run_dir, opts.examples)
    atomic_write_text(run_dir / "report.md", markdown)
    log(render_table(payload["models"]))
    log(f"[report] wrote {run_dir / 'report.md'} and {run_dir / 'results.json'}")
    return payload


def _check_disjoint(fit: Sequence[dict], test: Sequence[dict]) -> None:
    """The held-out claim rests on this: no image and no (image, question) pair in both splits."""
    shared = {r["image"] for r in fit} & {r["image"] for r in test}
    if shared:
        raise ConfigError(f"extras.report: fitness and test splits share {len(shared)} images (e.g. {sorted(shared)[0]})")


def _ordered(scores: dict[str, Any]) -> list[str]:
    return [n for n in MODEL_ORDER if n in scores] + [n for n in scores if n not in MODEL_ORDER]


# -- rendering -------------------------------------------------------------------------------
def render_table(models: dict[str, dict[str, Any]]) -> str:
    """The paper's layout: one row per model; ROUGE-L, strict ROUGE-L, key-word accuracy and
    key-word accuracy per question type (all x100 / percent, held-out Japanese questions)."""
    types = sorted({t for m in models.values() for t in (m.get("by_type") or {})})
    head = ["model", "name", "ROUGE-L", "ROUGE-L (strict)", "key-word acc. %"] + [f"{t} %" for t in types]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        cells = [LABELS.get(name, name), f"`{name}`", f"{m['rougeL']:.1f}", f"{m['rougeL_strict']:.1f}",
                 f"{m.get('keyword_acc', float('nan')):.1f}"]
        cells += [f"{(m.get('by_type') or {}).get(t, float('nan')):.1f}" for t in types]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(config, payload: dict[str, Any], test: Sequence[dict], answers: dict[str, list[str]],
                  run_dir: Path, examples: int) -> str:
    models = payload["models"]
    grid = payload["uniform_grid"]
    lines = [
        f"# {config.name or 'toy EvoVLM-JP'}: held-out results (seed {config.seed})", "",
        f"{payload['test']['n']} held-out Japanese questions ({payload['test']['split']} split). ROUGE-L: "
        "MeCab tokens, mean F x 100; strict: non-Japanese answers score 0. Key-word accuracy: the "
        "answer names the asked value and no competing value. The Japanese LM answers from the "
        "question alone (it cannot see the image).", "",
        render_table(models), "",
        f"`best_uniform` = task arithmetic with weights {grid['best']} (English VLM, Japanese LM), the best "
        f"of {len(grid['scores'])} hand-set uniform merges on the {grid['split']} split ({grid['objective']}: "
        + ", ".join(f"{g['weights']} {g['fitness']:.1f}" for g in grid["scores"]) + ").", "",
        "Evolution (fitness split, best fitness / evaluations): "
        + "; ".join(f"{name} {s['best_fitness']:.1f} / {s['evaluations']}" for name, s in payload["stages"].items()
                    if s.get("best_fitness") is not None) + ".", "",
        "![scores](report.png)", "",
    ]
    if examples:
        lines += ["## Example answers", ""]
        for row_index in _example_rows(test, examples):
            row = test[row_index]
            lines += [f"**{row.get('type', '')}**: {row['question']} — image `{row['image']}`", "",
                      f"![]({_rel(row['image_path'], run_dir)})", "", "| model | answer |", "|---|---|",
                      f"| reference | {row['answer']} |"]
            lines += [f"| `{name}` | {cell(answers[name][row_index])} |" for name in _ordered(answers)]
            lines.append("")
    lines += ["## Evolution", ""]
    for name in payload["stages"]:
        for plot in ("fitness.png", "genome.png"):
            if (run_dir / name / plot).is_file():
                lines += [f"![{name} {plot}]({name}/{plot})", ""]
    return "\n".join(lines)


def _example_rows(rows: Sequence[dict], n: int) -> list[int]:
    """The first row of each question type, then more in order, up to n."""
    return first_of_each(rows, "type", n)



def _rel(path: str, start: Path) -> str:
    import os

    try:
        return os.path.relpath(path, start)
    except ValueError:
        return path


def plot_scores(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Bars: key-word accuracy and ROUGE-L per model."""
    return bar_chart(models, [("keyword_acc", "key-word acc. %"), ("rougeL", "ROUGE-L")], path, "held-out Japanese VQA")
