"""lm-eval task lists on LLM checkpoints, in the paper's layout (`evomm eval --lm-eval`).

Any checkpoint evomm can load is evaluated: plain causal LMs, and DFS checkpoints (importing
evomm registers their class, no `trust_remote_code`). The table has one row per model, one
column per task (percent) and their mean, as the paper's JP-LMEH column is built.

`jp-lmeh` names the lm-eval tasks that correspond to the paper's nine Japanese tasks
(Stability AI's JP-LMEH v0.3, which the paper used). lm-eval 0.4.13 ships eight of them as its
`japanese_leaderboard` group; JCoLA has no lm-eval task and is left out. Every one of them
downloads its dataset from the Hugging Face Hub on first use (cache it, or run with network).
Their prompt templates and few-shot counts are lm-eval's, not JP-LMEH v0.3's, so the numbers
are comparable between models evaluated here, not with the paper's table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evomm.errors import ConfigError

#: paper column -> (lm-eval task, metric key); None: no lm-eval task
JP_LMEH: dict[str, tuple[str, str] | None] = {
    "JComQA": ("ja_leaderboard_jcommonsenseqa", "acc,none"),
    "JNLI": ("ja_leaderboard_jnli", "acc,none"),
    "MARC": ("ja_leaderboard_marc_ja", "acc,none"),
    "JSQuAD": ("ja_leaderboard_jsquad", "exact_match,whitespaces"),
    "JAQKET": ("ja_leaderboard_jaqket_v2", "exact_match,whitespaces"),
    "XLSum": ("ja_leaderboard_xlsum", "rouge2,whitespaces"),
    "XWino": ("ja_leaderboard_xwinograd", "acc,none"),
    "MGSM": ("ja_leaderboard_mgsm", "acc,none"),
    "JCoLA": None,
}
PRESETS: dict[str, dict[str, tuple[str, str] | None]] = {"jp-lmeh": JP_LMEH}


@dataclass
class Column:
    label: str
    task: str
    metric: str = "acc,none"
    scale: float = 100.0  # lm-eval reports fractions; the table shows percents


@dataclass
class LLMEvalReport:
    columns: list[Column]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> label -> percent
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    def average(self, model: str) -> float:
        values = [self.rows[model][c.label] for c in self.columns]
        return sum(values) / len(values)

    def to_json(self) -> dict[str, Any]:
        return {"columns": [c.__dict__ for c in self.columns],
                "models": {m: {**v, "avg": self.average(m)} for m, v in self.rows.items()}, "raw": self.raw}


def parse_tasks(spec: str) -> list[Column]:
    """`jp-lmeh`, or `task[:metric][,task...]` (metric default `acc,none`, written `acc_ja/none` on
    the command line is also accepted)."""
    if spec in PRESETS:
        return [Column(label, *pair) for label, pair in PRESETS[spec].items() if pair is not None]
    columns = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        task, _, metric = item.partition(":")
        metric = metric.replace("/", ",") if metric else "acc,none"
        if "," not in metric:
            metric += ",none"
        label = task if metric == "acc,none" else f"{task} {metric.split(',')[0]}"
        # evomm's own toy tasks already report percents
        columns.append(Column(label, task, metric, 1.0 if task.startswith("toy_math_ja") else 100.0))
    if not columns:
        raise ConfigError(f"--lm-eval {spec!r}: name tasks (task[:metric],...) or a preset ({', '.join(PRESETS)})")
    labels = [c.label for c in columns]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--lm-eval {spec!r}: a task and metric is named twice")
    return columns


def load_causal_lm(path: str, dtype: str = "float32", device: str = "cpu") -> torch.nn.Module:
    """A causal LM (DFS checkpoints included) from safetensors, without remote code."""
    import evomm.models.dfs  # noqa: F401  registers the DFS class with AutoModelForCausalLM
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=False,
                                                     use_safetensors=True)
    except (OSError, ValueError) as exc:  # no such folder or hub id, no safetensors, unknown architecture
        raise ConfigError(f"--model {path}: cannot load a causal LM ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def evaluate_llms(models: dict[str, str], columns: list[Column], *, include_path: list[str] | None = None,
                  limit: float | None = None, batch_size: int = 8, num_fewshot: int | None = None,
                  apply_chat_template: bool = False, dtype: str = "float32", device: str = "cpu",
                  tokenizer: str | None = None, log=print) -> LLMEvalReport:
    """Run the columns' tasks on every model (tasks loaded once, with each model's tokenizer)."""
    from evomm.fitness.lm_eval_harness import LMEvalHarness, LMEvalSettings, load_tokenizer

    report = LLMEvalReport(columns)
    settings = LMEvalSettings(tasks=[{"name": c.task, "metric": c.metric} for c in columns],
                              include_path=list(include_path or []), limit=limit, batch_size=batch_size,
                              num_fewshot=num_fewshot, apply_chat_template=apply_chat_template)
    harness = LMEvalHarness(settings, quiet=False)  # tasks loaded once, for every model
    shared = load_tokenizer(tokenizer) if tokenizer else None
    for name, path in models.items():
        model = load_causal_lm(path, dtype, device)
        results = harness.run(model, shared or load_tokenizer(path))
        report.raw[name] = results
        report.rows[name] = {}
        for c in columns:
            value = results.get(c.task, {}).get(c.metric)
            if value is None:
                raise ConfigError(f"{c.task} reported no {c.metric!r} for {name}")
            value = float(value)
            report.rows[name][c.label] = c.scale * value
        log(f"[eval] {name}: " + ", ".join(f"{c.label} {report.rows[name][c.label]:.1f}" for c in columns))
    return report


def render_markdown(report: LLMEvalReport) -> str:
    head = ["model", *[c.label for c in report.columns], "avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in report.rows:
        cells = [f"{report.rows[model][c.label]:.1f}" for c in report.columns]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {report.average(model):.1f} |")
    return "\n".join(lines) + "\n"


def write_llm_report(report: LLMEvalReport, out_dir: Path) -> None:
    """table.md and results.json, written atomically into `out_dir`."""
    from evomm.search.run import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "table.md", render_markdown(report))
    atomic_write_text(out_dir / "results.json", json.dumps(report.to_json(), indent=1, ensure_ascii=False, default=str))
