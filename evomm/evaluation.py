"""Benchmark runs: generate answers with each model, score them, write the paper's table.

A run config (YAML) names benchmarks and models; every model answers every benchmark, and
the report has one row per model: ROUGE-L per benchmark in the layout of the EvoVLM-JP
table, then ROUGE-1/2/L and their strict-Japanese variants per benchmark. The same
`score_answers` / `evaluate_generator` functions serve as the evolution fitness.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomm.data import VQADataset, load_benchmark
from evomm.errors import ConfigError, EvommError
from evomm.metrics.rouge import ROUGE_TYPES, JapaneseRouge, rouge_ja

METRIC_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


# -- config ---------------------------------------------------------------------------------
class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ja-vg-vqa-500", "ja-vlm-bench-in-the-wild", "jsonl"]
    path: str | None = None
    split: str = "test"
    limit: int | None = Field(default=None, ge=1)
    name: str | None = None
    lang: str | None = None  # jsonl only: keep rows with this "lang"


class ModelSpec(BaseModel):
    """A model from a path (HF dir or hub id)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    processor: str | None = None
    template: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    # LLaVA-NeXT checkpoints: `tiling` (their own class; what unset means) or `single_crop`
    # (their weights in LlavaForConditionalGeneration: one crop, no image_newline), see
    # evomm.models.vlm.IMAGE_MODES
    image_mode: Literal["tiling", "single_crop"] | None = None


class GenerationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=128, ge=1)
    num_beams: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0)  # 1.0: none; > 1 penalises repeats
    length_penalty: float | None = None  # beam search only


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "evaluation"
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    generation: GenerationSpec = GenerationSpec()
    device: str = "cpu"
    strict_japanese: bool = True
    bootstrap: int | None = Field(default=None, ge=1)
    seed: int = 0
    threads: int = Field(default=1, ge=1)


def load_config(path: str | Path) -> EvalConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    try:
        return EvalConfig.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {err['msg']}") from exc


def resolve_path(value: str | None, base: Path | None) -> str | None:
    """Relative paths: the working directory first, then the config file's directory."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or base is None:
        return str(path)
    candidate = base / path
    return str(candidate) if candidate.exists() else str(path)


# -- scoring ---------------------------------------------------------------------------------
def score_answers(
    references: Sequence[str],
    predictions: Sequence[str],
    strict_japanese: bool = True,
    detector=None,
    bootstrap: int | None = None,
    seed: int = 0,
    scorer: JapaneseRouge | None = None,
) -> dict[str, float]:
    """ROUGE-1/2/L (x100) and, with `strict_japanese`, the same with `_ja` suffixes."""
    metrics = rouge_ja(references, predictions, bootstrap=bootstrap, seed=seed, scorer=scorer)
    if strict_japanese:
        if detector is None:
            from evomm.metrics.language import default_detector

            detector = default_detector()
        strict = rouge_ja(references, predictions, strict_japanese=True, detector=detector,
                          bootstrap=bootstrap, seed=seed, scorer=scorer)
        for key, value in strict.items():  # rougeL -> rougeL_ja, rougeL_low -> rougeL_ja_low
            base, _, suffix = key.partition("_")
            metrics[f"{base}_ja" + (f"_{suffix}" if suffix else "")] = value
    return metrics


@dataclass
class BenchmarkResult:
    benchmark: str
    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)


Generator = Callable[[Sequence[str], Sequence[Any]], list[str]]


def evaluate_generator(generator: Generator, dataset: VQADataset, **score_kwargs) -> BenchmarkResult:
    """Answer every question of `dataset` with `generator(questions, images)` and score."""
    predictions = list(generator(dataset.questions, dataset.images))
    if len(predictions) != len(dataset):
        raise EvommError(f"generator returned {len(predictions)} answers for {len(dataset)} "
                         "questions")
    metrics = score_answers(dataset.answers, predictions, **score_kwargs)
    records = [
        {"id": ex.id, "question": ex.question, "answer": ex.answer, "prediction": pred}
        for ex, pred in zip(dataset, predictions)
    ]
    return BenchmarkResult(dataset.name, metrics, records)


class VQAFitness:
    """Fitness for the evolution loop: one ROUGE number for a candidate model.

    Holds the question set, one MeCab scorer (references tokenized once for the whole
    run), the language detector, and a generator whose processor and settings are reused;
    `fitness(model)` answers every question with `model` (weights already set in memory)
    and returns `metric` (default: strict ROUGE-L, so English answers earn nothing).
    """

    def __init__(self, dataset: VQADataset, generator, metric: str = "rougeL_ja") -> None:
        from evomm.metrics.language import default_detector

        valid = [*ROUGE_TYPES, *(f"{k}_ja" for k in ROUGE_TYPES)]
        if metric not in valid:
            raise ConfigError(f"fitness metric must be one of {valid}, got {metric!r}")
        self.dataset = dataset
        self.generator = generator
        self.metric = metric
        self.scorer = JapaneseRouge()
        self.detector = default_detector()
        self.last: BenchmarkResult | None = None

    def __call__(self, model=None) -> float:
        generator = self.generator if model is None else self.generator.with_model(model)
        self.last = evaluate_generator(
            generator, self.dataset, strict_japanese=self.metric.endswith("_ja"),
            detector=self.detector, scorer=self.scorer,
        )
        return self.last.metrics[self.metric]


# -- models ------------------------------------------------------------------------------------
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_generator(spec: ModelSpec, config: EvalConfig, base: Path | None):
    from evomm.models.vlm import VLMGenerator

    return VLMGenerator.from_pretrained(
        resolve_path(spec.path, base),
        processor_path=resolve_path(spec.processor, base),
        template=spec.template,
        generation=config.generation.model_dump(),
        device=_device(config.device),
        dtype=spec.dtype,
        trust_remote_code=spec.trust_remote_code,
        image_mode=spec.image_mode,
        progress=True,
    )


# -- the run -------------------------------------------------------------------------------------
@dataclass
class EvalReport:
    name: str
    benchmarks: list[str]
    # model name -> benchmark name -> result
    results: dict[str, dict[str, BenchmarkResult]]
    strict_japanese: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "benchmarks": self.benchmarks,
            "metrics": {m: {b: r.metrics for b, r in rows.items()} for m, rows in self.results.items()},
        }


def run_evaluation(
    config: EvalConfig,
    out_dir: str | Path | None = None,
    config_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> EvalReport:
    """Load every benchmark (fail early on data errors), then run each model in turn."""
    import torch

    torch.set_num_threads(config.threads)
    datasets: list[VQADataset] = []
    for spec in config.benchmarks:
        dataset = load_benchmark(spec.kind, resolve_path(spec.path, config_dir), split=spec.split,
                                 limit=spec.limit, name=spec.name, lang=spec.lang)
        log(f"loaded {dataset.name}: {len(dataset)} questions")
        datasets.append(dataset)
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"benchmark names must be unique, got {names} (set `name:`)")
    model_names = [m.name for m in config.models]
    if len(set(model_names)) != len(model_names):
        raise ConfigError(f"model names must be unique, got {model_names}")

    from evomm.metrics.language import default_detector

    scorer, detector = JapaneseRouge(), default_detector()
    results: dict[str, dict[str, BenchmarkResult]] = {}
    for spec in config.models:
        log(f"model {spec.name}: loading")
        generator = build_generator(spec, config, config_dir)
        results[spec.name] = {}
        for dataset in datasets:
            result = evaluate_generator(
                generator, dataset, strict_japanese=config.strict_japanese, detector=detector,
                bootstrap=config.bootstrap, seed=config.seed, scorer=scorer,
            )
            results[spec.name][dataset.name] = result
            log(f"  {dataset.name}: ROUGE-L {result.metrics['rougeL']:.1f}")
        del generator
        gc.collect()
    report = EvalReport(config.name, names, results, config.strict_japanese)
    if out_dir is not None:
        write_report(report, config, Path(out_dir))
    return report


# -- tables and files ------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def render_markdown(report: EvalReport) -> str:
    """The paper's layout (ROUGE-L per benchmark), then all metrics per benchmark."""
    lines = [f"# {report.name}", "", "ROUGE-L (MeCab tokens, mean F x 100)"]
    if report.strict_japanese:
        lines[-1] += "; in parentheses the strict variant (non-Japanese answers score 0)"
    lines += ["", "| Model | " + " | ".join(report.benchmarks) + " |",
              "|---|" + "---|" * len(report.benchmarks)]
    for model, rows in report.results.items():
        cells = []
        for bench in report.benchmarks:
            m = rows[bench].metrics
            cell = _fmt(m["rougeL"])
            if "rougeL_ja" in m:
                cell += f" ({_fmt(m['rougeL_ja'])})"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    keys = list(ROUGE_TYPES) + ([f"{k}_ja" for k in ROUGE_TYPES] if report.strict_japanese else [])
    headers = [METRIC_LABELS[k] for k in ROUGE_TYPES]
    if report.strict_japanese:
        headers += [f"{METRIC_LABELS[k]} (ja)" for k in ROUGE_TYPES]
    for bench in report.benchmarks:
        lines += ["", f"## {bench}", "", "| Model | " + " | ".join(headers) + " |",
                  "|---|" + "---|" * len(headers)]
        for model, rows in report.results.items():
            m = rows[bench].metrics
            lines.append(f"| {model} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot_report(report: EvalReport, path: Path) -> Path:
    """Grouped bars: ROUGE-L (solid) and strict ROUGE-L (hatched) per benchmark and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, benches = list(report.results), report.benchmarks
    x = np.arange(len(benches))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(benches) * max(len(models), 1) ** 0.5), 3.2))
    for i, model in enumerate(models):
        values = [report.results[model][b].metrics["rougeL"] for b in benches]
        bars = ax.bar(x + i * width, values, width, label=model)
        if report.strict_japanese:
            strict = [report.results[model][b].metrics["rougeL_ja"] for b in benches]
            ax.bar(x + i * width, strict, width, fill=False, hatch="//",
                   edgecolor=bars.patches[0].get_facecolor())
    ax.set_xticks(x + width * (len(models) - 1) / 2, benches)
    ax.set_ylabel("ROUGE-L")
    ax.set_ylim(0, 100)
    ax.set_title(report.name + (" (hatched: strict Japanese)" if report.strict_japanese else ""))
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(report: EvalReport, config: EvalConfig, out_dir: Path) -> Path:
    """Write table.md, rouge.png, results.json and predictions/ into a temporary directory next to
    `out_dir`, then swap it in: a failed run never leaves half-written files."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "table.md").write_text(render_markdown(report), encoding="utf-8")
        plot_report(report, tmp / "rouge.png")
        payload = report.to_json() | {"config": config.model_dump()}
        (tmp / "results.json").write_text(json.dumps(payload, ensure_ascii=False, indent=2),
                                          encoding="utf-8")
        for model, rows in report.results.items():
            folder = tmp / "predictions" / _safe(model)
            folder.mkdir(parents=True, exist_ok=True)
            for bench, result in rows.items():
                with (folder / f"{_safe(bench)}.jsonl").open("w", encoding="utf-8") as handle:
                    for record in result.records:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
