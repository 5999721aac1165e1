"""Which models and runs the demo serves, from command-line flags or environment variables.

Flags win over environment variables, which win over the toy-zoo defaults, so
`python demos/app.py` works out of the box on the shipped zoo and a Space is configured by
its variables alone. A model is given as `PATH` or `NAME=PATH`; lists are comma-separated.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pydantic import BaseModel, Field

from evomm.demo.limits import DemoLimits
from evomm.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

ENV_MERGED = "EVOMM_DEMO_MERGED"
ENV_PARENTS = "EVOMM_DEMO_PARENTS"
ENV_SDXL = "EVOMM_DEMO_SDXL"
ENV_SDXL_PARENTS = "EVOMM_DEMO_SDXL_PARENTS"
ENV_RUNS_ROOT = "EVOMM_DEMO_RUNS_ROOT"
ENV_EXAMPLES = "EVOMM_DEMO_EXAMPLES"
ENV_THREADS = "EVOMM_DEMO_THREADS"
ENV_DEVICE = "EVOMM_DEMO_DEVICE"
ENV_TEMPLATE = "EVOMM_DEMO_TEMPLATE"

#: Toy defaults, relative to the repository (first existing candidate wins).
DEFAULT_MERGED = ("assets/evovlm_jp", "assets/zoo/evovlm_jp", "assets/zoo/merged_vlm")
DEFAULT_PARENTS = ("assets/zoo/english_vlm", "assets/zoo/japanese_lm")
DEFAULT_SDXL = ("assets/sdxl_zoo/evosdxl_jp", "assets/sdxl_zoo/merged")
DEFAULT_SDXL_PARENTS = ("assets/sdxl_zoo/japanese", "assets/sdxl_zoo/fewstep")
DEFAULT_RUNS_ROOT = "runs"
DEFAULT_EXAMPLES = ("assets/examples", "assets/zoo/examples", "assets/zoo/data")


class ModelRef(BaseModel):
    """A model directory and the name shown above its output."""

    name: str
    path: Path


class DemoConfig(BaseModel):
    """Everything the app needs to know; validated once at start-up."""

    merged: ModelRef | None = None
    parents: list[ModelRef] = Field(default_factory=list)
    sdxl_merged: ModelRef | None = None
    sdxl_parents: list[ModelRef] = Field(default_factory=list)
    runs_root: Path | None = None
    examples_dir: Path | None = None
    limits: DemoLimits = Field(default_factory=DemoLimits)
    template: str | None = None  # prompt template name of evomm.models.vlm (None: chat template)
    threads: int = Field(1, gt=0)
    device: str = "cpu"

    @property
    def has_vlm(self) -> bool:
        return self.merged is not None or bool(self.parents)

    @property
    def has_sdxl(self) -> bool:
        return self.sdxl_merged is not None or bool(self.sdxl_parents)


def parse_model_ref(text: str, base: Path = REPO_ROOT, marker: str = "config.json") -> ModelRef:
    """`PATH` or `NAME=PATH` → ModelRef; the directory must exist and hold `marker`."""
    text = text.strip()
    name, sep, path_text = text.partition("=")
    if not sep:
        name, path_text = "", text
    path = Path(path_text.strip()).expanduser()
    if not path.is_absolute():
        path = (Path.cwd() / path) if (Path.cwd() / path).exists() else (base / path)
    path = path.resolve()
    if not path.is_dir():
        raise ConfigError(f"model directory not found: {path_text.strip()!r}")
    if not (path / marker).is_file():
        raise ConfigError(f"{path_text.strip()!r} has no {marker}; is it a Hugging Face / diffusers model folder?")
    return ModelRef(name=name.strip() or path.name, path=path)


def parse_model_list(text: str, base: Path = REPO_ROOT, marker: str = "config.json") -> list[ModelRef]:
    return [parse_model_ref(item, base, marker) for item in text.split(",") if item.strip()]


def _first_existing(candidates: tuple[str, ...], base: Path) -> Path | None:
    return next((base / c for c in candidates if (base / c).is_dir()), None)


def _stages_best_first(view) -> list[str]:
    """A run's stages, best held-out score first (its results.json row of the same name,
    e.g. `ps`, `dfs`, `ps_dfs`), then unscored stages, latest first."""
    headers = view.table_headers
    metric = next((m for m in ("keyword_acc", "rougeL", "clip_score") if m in headers), None)
    latest_first = list(reversed(view.stages))
    if headers[:1] != ["model"] or metric is None:
        return latest_first
    column = headers.index(metric)
    scores = {row[0]: row[column] for row in view.table_rows if isinstance(row[column], (int, float))}
    return sorted(latest_first, key=lambda stage: -scores[stage] if stage in scores else float("inf"))


def latest_run_model(runs_root: Path | None, kind: str = "vlm") -> ModelRef | None:
    """The best model of the newest run under `runs_root` (the exported `model/` of its best
    stage on the held-out set, else of its last stage) that is a VLM (`kind="vlm"`) or an SDXL
    pipeline (`kind="sdxl"`)."""
    import json

    from evomm.demo.runs import list_runs, load_run

    if runs_root is None or not runs_root.is_dir():
        return None
    for name in list_runs(runs_root):
        view = load_run(runs_root, name)
        for stage in _stages_best_first(view):
            model = (view.path / stage / "model").resolve()
            if not model.is_relative_to(view.path):
                continue
            if kind == "sdxl":
                found = (model / "model_index.json").is_file()
            else:
                try:
                    model_type = json.loads((model / "config.json").read_text(encoding="utf-8")).get("model_type")
                except (ValueError, OSError):
                    continue
                found = model_type in ("llava", "llava_next")
            if found:
                label = name if stage == "." else f"{name}/{stage}"
                return ModelRef(name=f"evolved ({label})", path=model)
    return None


def zoo_prompt(refs: list[ModelRef]) -> str | None:
    """The prompt layout a toy zoo was trained with (its `build_info.json`), if a model is from one."""
    import json

    for ref in refs:
        for folder in (ref.path, ref.path.parent):
            info = folder / "build_info.json"
            if info.is_file():
                try:
                    prompt = json.loads(info.read_text(encoding="utf-8")).get("prompt")
                except (ValueError, OSError):
                    continue
                if isinstance(prompt, str) and "{question}" in prompt:
                    return prompt
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `demos/app.py` (each also readable from the environment variable named)."""
    parser.add_argument("--merged", help=f"merged VLM dir, [NAME=]PATH (env {ENV_MERGED})")
    parser.add_argument("--parents", help=f"parent models, comma-separated [NAME=]PATH (env {ENV_PARENTS})")
    parser.add_argument("--sdxl", help=f"merged SDXL pipeline dir (env {ENV_SDXL})")
    parser.add_argument("--sdxl-parents", help=f"parent SDXL pipeline dirs (env {ENV_SDXL_PARENTS})")
    parser.add_argument("--runs-root", help=f"directory holding evolution runs (env {ENV_RUNS_ROOT})")
    parser.add_argument("--examples", help=f"directory of example images (env {ENV_EXAMPLES})")
    parser.add_argument("--template", help=f"prompt template: chat, a name from evomm.models.vlm, a string with "
                        f"{{input}}, or one with {{context}} {{question}} like the toy zoo's (env {ENV_TEMPLATE}; "
                        "default: the toy zoo's layout for zoo models, else the model's chat template)")
    parser.add_argument("--threads", type=int, help=f"torch threads (env {ENV_THREADS}, default 1)")
    parser.add_argument("--device", help=f"torch device, e.g. cpu or cuda (env {ENV_DEVICE}, default cpu)")
    parser.add_argument("--max-new-tokens", type=int, help="longest generated answer")
    parser.add_argument("--max-prompt-chars", type=int, help="longest question / prompt")
    parser.add_argument("--max-upload-mb", type=float, help="largest image upload in MB")
    parser.add_argument("--concurrency", type=int, help="requests run at the same time")
    parser.add_argument("--queue-size", type=int, help="requests that may wait")


def config_from(args: argparse.Namespace | None = None, env: dict[str, str] | None = None,
                base: Path = REPO_ROOT) -> DemoConfig:
    """Build the config: flag, else environment variable, else toy default."""
    env = dict(os.environ) if env is None else env
    args = args or argparse.Namespace()

    def pick(flag: str, var: str) -> str | None:
        value = getattr(args, flag, None)
        return value if value not in (None, "") else (env.get(var) or None)

    merged_text = pick("merged", ENV_MERGED)
    parents_text = pick("parents", ENV_PARENTS)
    sdxl_text = pick("sdxl", ENV_SDXL)
    sdxl_parents_text = pick("sdxl_parents", ENV_SDXL_PARENTS)
    runs_text = pick("runs_root", ENV_RUNS_ROOT)
    examples_text = pick("examples", ENV_EXAMPLES)

    def default_ref(candidates: tuple[str, ...], marker: str = "config.json") -> ModelRef | None:
        path = next((base / c for c in candidates if (base / c / marker).is_file()), None)
        return ModelRef(name=path.name, path=path.resolve()) if path else None

    merged = parse_model_ref(merged_text, base) if merged_text else default_ref(DEFAULT_MERGED)
    parents = (
        parse_model_list(parents_text, base)
        if parents_text
        else [r for c in DEFAULT_PARENTS if (r := default_ref((c,)))]
    )
    pipeline = "model_index.json"
    sdxl = parse_model_ref(sdxl_text, base, pipeline) if sdxl_text else default_ref(DEFAULT_SDXL, pipeline)
    sdxl_parents = (
        parse_model_list(sdxl_parents_text, base, pipeline)
        if sdxl_parents_text
        else [r for c in DEFAULT_SDXL_PARENTS if (r := default_ref((c,), pipeline))]
    )
    runs_root = Path(runs_text).expanduser() if runs_text else base / DEFAULT_RUNS_ROOT
    if runs_text and not runs_root.is_dir():
        raise ConfigError(f"runs root not found: {runs_text!r}")
    # no merged model given or shipped: the newest evolution run's best model
    if merged is None:
        merged = latest_run_model(runs_root.resolve() if runs_root.is_dir() else None, "vlm")
    if sdxl is None:
        sdxl = latest_run_model(runs_root.resolve() if runs_root.is_dir() else None, "sdxl")
    if examples_text:
        examples_dir = Path(examples_text).expanduser()
        if not examples_dir.is_dir():
            raise ConfigError(f"examples directory not found: {examples_text!r}")
    else:
        examples_dir = _first_existing(DEFAULT_EXAMPLES, base)

    limits = DemoLimits()
    overrides = {
        "max_new_tokens": getattr(args, "max_new_tokens", None),
        "max_prompt_chars": getattr(args, "max_prompt_chars", None),
        "concurrency": getattr(args, "concurrency", None),
        "queue_size": getattr(args, "queue_size", None),
    }
    upload_mb = getattr(args, "max_upload_mb", None)
    if upload_mb is not None:
        overrides["max_upload_bytes"] = int(upload_mb * 1024 * 1024)
    limits = DemoLimits(**{**limits.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})

    threads_text = getattr(args, "threads", None) or env.get(ENV_THREADS) or 1
    try:
        threads = int(threads_text)
    except ValueError:
        raise ConfigError(f"{ENV_THREADS} must be an integer, got {threads_text!r}") from None
    device = getattr(args, "device", None) or env.get(ENV_DEVICE) or "cpu"
    template = pick("template", ENV_TEMPLATE)
    if template:
        from evomm.models.vlm import CHAT, PROMPT_TEMPLATES

        if template != CHAT and template not in PROMPT_TEMPLATES and not any(
            key in template for key in ("{input}", "{question}")
        ):
            raise ConfigError(
                f"template {template!r}: use 'chat', one of {sorted(PROMPT_TEMPLATES)}, or a string with "
                "{input} or {question}"
            )
    return DemoConfig(
        merged=merged,
        parents=parents,
        sdxl_merged=sdxl,
        sdxl_parents=sdxl_parents,
        runs_root=runs_root.resolve() if runs_root.is_dir() else None,
        examples_dir=examples_dir.resolve() if examples_dir else None,
        limits=limits,
        template=template or zoo_prompt(([merged] if merged else []) + parents),
        threads=threads,
        device=device,
    )


def example_images(config: DemoConfig, limit: int = 8) -> list[Path]:
    """Up to `limit` example images from the examples directory."""
    return [path for path, _ in example_items(config, limit)]


def example_items(config: DemoConfig, limit: int = 8) -> list[tuple[Path, str | None]]:
    """(image, Japanese question or None) examples from the examples directory.

    A directory in the toy zoo's JSONL+PNG format (`test.jsonl` with `image`, `question`,
    `lang`, `type`) gives image-question pairs, one question type after another; any other
    directory gives its PNG/JPEG files without questions.
    """
    import json

    root = config.examples_dir
    if root is None:
        return []
    for name in ("test.jsonl", "fitness.jsonl"):
        jsonl = root / name
        if not jsonl.is_file():
            continue
        by_type: dict[str, list[tuple[Path, str]]] = {}
        with jsonl.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle):
                if line_number > 5000:
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("lang", "ja") != "ja" or not isinstance(record.get("image"), str):
                    continue
                image = (root / record["image"]).resolve()
                if image.is_relative_to(root.resolve()) and image.is_file() and isinstance(record.get("question"), str):
                    by_type.setdefault(str(record.get("type", "")), []).append((image, record["question"]))
        items: list[tuple[Path, str | None]] = []
        queues = list(by_type.values())
        while queues and len(items) < limit:
            for queue in list(queues):
                if queue and len(items) < limit:
                    items.append(queue.pop(0))
                if not queue:
                    queues.remove(queue)
        if items:
            return items
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"} and p.is_file()
    )
    return [(p, None) for p in files[:limit]]


def sdxl_example_prompts(config: DemoConfig, limit: int = 6) -> list[str]:
    """Held-out Japanese prompts of the toy SDXL zoo (`prompts.json` beside its pipelines)."""
    import json

    for ref in ([config.sdxl_merged] if config.sdxl_merged else []) + config.sdxl_parents:
        prompts_file = ref.path.parent / "prompts.json"
        if not prompts_file.is_file():
            continue
        try:
            splits = json.loads(prompts_file.read_text(encoding="utf-8")).get("splits", {})
        except (ValueError, OSError, AttributeError):
            continue
        for split in ("test", "heldout", "held_out", "fitness"):
            texts = [p.get("text") for p in splits.get(split, []) if isinstance(p, dict)]
            texts = [t for t in texts if isinstance(t, str) and t.strip()]
            if texts:
                return texts[:: max(1, len(texts) // limit)][:limit]
    return []
