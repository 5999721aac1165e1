"""Pieces the toy reports share: options from `extras.report`, table cells, example rows, bar plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomm.errors import ConfigError

#: the rows every toy report ends with: the best hand-set merge and the paper's three evolved models
MERGED_LABELS = {
    "best_uniform": "best hand-set uniform merge",
    "ps": "PS evolved",
    "dfs": "DFS evolved",
    "ps_dfs": "PS+DFS evolved",
}


class ReportOptionsBase(BaseModel):
    """`extras.report` fields every toy report reads; each report adds its own."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    fitness_split: str = "fitness"
    test_split: str = "test"
    base: str = "base"
    n_test: int | None = Field(None, ge=1, description="test rows used (default: all)")
    n_fitness: int | None = Field(None, ge=1, description="fitness rows for choosing best_uniform (default: all)")
    batch_size: int = Field(100, ge=1)
    examples: int = Field(4, ge=0)


Options = TypeVar("Options", bound=BaseModel)


def read_report_options(config, model: type[Options]) -> Options:
    """`extras.report` validated by `model`; its `dataset` resolved against the config's folder."""
    try:
        opts = model.model_validate(dict((config.extras or {}).get("report") or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"extras.report{'.' + loc if loc else ''}: {err['msg']}") from None
    if config.config_dir and not Path(opts.dataset).is_absolute():
        opts.dataset = str((Path(config.config_dir) / opts.dataset).resolve())
    return opts


def first_of_each(rows: Sequence[dict], key: str, n: int) -> list[int]:
    """Indices of the first row of each value of `key`, in order, at most n."""
    picked, seen = [], set()
    for i, row in enumerate(rows):
        if row.get(key) not in seen:
            seen.add(row.get(key))
            picked.append(i)
    return picked[:n]


def cell(text: str) -> str:
    """A model answer as one markdown table cell."""
    return (text or "(empty)").replace("|", "\\|").replace("\n", " ")


def bar_chart(models: dict[str, dict[str, Any]], bars: Sequence[tuple[str, str]], path: Path, title: str) -> Path:
    """Grouped bars (one group per model, one bar per `(key, label)`), 0-100, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(models)
    x = np.arange(len(names))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.4))
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [models[n].get(key, 0) for n in names], width, label=label)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
