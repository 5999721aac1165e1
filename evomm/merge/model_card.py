"""The README.md model card written beside a merged checkpoint: sources and recipe."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_model_card(plan, out_dir: Path, title: str | None = None) -> None:
    recipe = plan.recipe
    library = "diffusers" if plan.architecture == "sdxl_unet" else "transformers"
    front = {"library_name": library, "tags": ["merge", "evomm", recipe.merge_method],
             "base_model": list(plan.models)}
    rows = []
    for ref, model in plan.models.items():
        role = []
        if ref == recipe.base_model:
            role.append("base")
        if ref == plan.primary:
            role.append("config and unmerged parts")
        rows.append(f"| `{ref}` | {model.adapter.describe()} | {', '.join(role) or 'merged'} |")
    merged = sum(t.merge for t in plan.tasks)
    text = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {recipe.name or title or Path(out_dir).name}", "",
        f"A merge made with evomm using **{recipe.merge_method}** "
        f"({plan.architecture}): {merged} of {len(plan.tasks)} tensors merged, the rest copied "
        f"from `{plan.primary}`.", "",
        "## Sources", "", "| model | architecture | role |", "|---|---|---|", *rows, "",
        "## Recipe", "",
        "Re-run with `evomm merge evomm_recipe.yml OUT_DIR`.", "",
        "```yaml", recipe.to_yaml().rstrip(), "```", "",
    ]
    (Path(out_dir) / "README.md").write_text("\n".join(text))
