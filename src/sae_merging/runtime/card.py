"""The model card (README.md) written into every saved model folder, so the folder can be
pushed to a hub as it is: what made the model (method, parents, settings) and how it scored,
in the layout of mergekit's cards (YAML front matter, then the recipe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

# The run settings that determine the merge, in the order a reader wants them.
RECIPE_KEYS = ("method", "merger", "pruner", "scorer", "scoring", "schedule", "seed")


def model_card(
    method: str,
    base: str | None,
    experts: Sequence[str],
    config: Mapping[str, Any],
    results: Mapping[str, Any],
) -> str:
    """README.md text of a merged model: `config` is the run's resolved config, `results` the
    run's results (test / opt accuracies, test sizes, sparsity)."""
    parents = ([base] if base else []) + list(experts)
    front = {"base_model": parents, "library_name": "transformers", "tags": ["merge", "sae-merging", method]}
    recipe = {key: config[key] for key in RECIPE_KEYS if key in config}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        f"# {method} merge",
        "",
        f"This model was merged with the `{method}` method of sae-merging "
        "(Sparsity-Aware Evolution for model merging and its baselines).",
        "",
        "## Models merged",
        "",
        *([f"- base: `{base}`"] if base else []),
        *(f"- expert: `{expert}`" for expert in experts),
        "",
        "## Scores",
        "",
        "| task | test accuracy | test items | optimization accuracy |",
        "|---|---|---|---|",
    ]
    test, opt, sizes = results.get("test", {}), results.get("opt", {}), results.get("test_examples", {})
    for task in [t for t in test if t != "mean"] + ["mean"]:
        opt_score = f"{opt[task]:.4f}" if task in opt else ""
        lines.append(f"| {task} | {test[task]:.4f} | {sizes.get(task, '')} | {opt_score} |")
    lines += [
        "",
        f"Sparsity (fraction of zero weights): {results.get('zero_fraction', 0.0):.4f}.",
        "",
        "## Configuration",
        "",
        "The settings of the run that made this model:",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
