"""A shortened toy EvoVLM-JP run: the README's main command with a budget of seconds.

The pipeline test and the demo's browser test both need a real run of
`pipelines/toy_evovlm_jp.yml` (all stages, held-out report, results.json); this writes the
shipped config with absolute zoo paths and a tiny budget, so both run the same thing.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOY_CONFIG = ROOT / "pipelines" / "toy_evovlm_jp.yml"
SHIPPED_ZOO = ROOT / "assets" / "zoo"


def short_toy_config(out_dir: str | Path, zoo: str | Path = SHIPPED_ZOO, n_samples: int = 10) -> Path:
    """Write the shortened config into `out_dir` and return its path."""
    zoo = Path(zoo)
    config = yaml.safe_load(TOY_CONFIG.read_text(encoding="utf-8"))
    config["sources"] = {"base": str(zoo / "base"), "vlm": str(zoo / "english_vlm"), "ja": str(zoo / "japanese_lm")}
    config["fitness"]["dataset"] = str(zoo / "data")
    config["fitness"]["n_samples"] = n_samples
    config["optimizer"].update(popsize=2, generations=1)
    for stage in config["stages"]:
        stage.get("optimizer", {}).update(popsize=2, generations=1)
    # one generation of two candidates: keep them near the 50/50 merge, which answers in Japanese
    config["stages"][0]["space"]["initial_values"] = {"weight": 0.5}
    config["stages"][0]["optimizer"]["sigma0"] = 0.05
    config["extras"]["report"].update(dataset=str(zoo / "data"), n_test=n_samples, n_fitness=n_samples,
                                      uniform_grid=[[0.5, 0.5], [0.5, 1.0]], max_new_tokens=24)
    path = Path(out_dir) / "toy_short.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def short_toy_run(run_dir: str | Path, work_dir: str | Path, zoo: str | Path = SHIPPED_ZOO) -> Path:
    """Run the shortened toy evolution (about 15 s on one core) into `run_dir`."""
    from evomm.cli import main

    config = short_toy_config(work_dir, zoo)
    if main(["evolve", str(config), "--out", str(run_dir), "--no-progress"]) != 0:
        raise RuntimeError("the shortened toy evolution failed")
    return Path(run_dir)
