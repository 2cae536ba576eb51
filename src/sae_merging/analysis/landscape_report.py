"""The analysis command behind `python analysis/landscape.py`: grids, then figures.

Output folder (`out_dir`):
    landscape.json            settings, models, batches, losses at the origin, timings, grid files,
                              and (analysis `summary`) every replicate's measures and their intervals
    grids/<task>/<model>.npz  the raw grids (coordinates, loss, lambda_min/max, convexity, HVPs)
    figures/<task>_{loss_contour,loss_surface,convexity}.{png,pdf}
    summary.md                the `summary` analysis as Markdown tables (sae_merging.analysis.summary)
With `redraw_only=true` the figures are drawn again from `landscape.json` and the grids, with
the current plot settings, and nothing is recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sae_merging.analysis import plots
from sae_merging.analysis.directions import DirectionSpec, model_direction
from sae_merging.analysis.hessian import EigenSpec, convexity_grid
from sae_merging.analysis.loss_plane import FixedBatch, fixed_examples, grid_coordinates, loss_grid, task_loss
from sae_merging.analysis.run_folders import read_results
from sae_merging.analysis.summary import SummarySpec, markdown, replicate_measures, summarize
from sae_merging.models.io import ModelRef, load_model, load_tokenizer
from sae_merging.utils import threads as thread_policy
from sae_merging.utils.device import resolve_device
from sae_merging.utils.files import atomic_write_json

log = logging.getLogger(__name__)

LANDSCAPE_FILE = "landscape.json"
SUMMARY_FILE = "summary.md"
FORMAT = 1
ANALYSES = ("loss", "convexity", "summary")
MAPS = ("loss", "convexity")
LAB_PREFIX = "lab:"
RUN_MODEL_DIR = "model"


def resolve_model(spec: str, lab_root: Callable[[], Path]) -> str:
    """A model entry as a loadable path: `lab:<base|math|multilingual>` is a model of the lab
    build, a run folder (holding `model/`) means its model, anything else is passed on (model
    folder, .gguf file, hub id)."""
    spec = str(spec)
    if spec.startswith(LAB_PREFIX):
        folder = lab_root() / spec.removeprefix(LAB_PREFIX)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{spec!r}: the lab has no model {folder.name!r} (base, math, multilingual)"
            )
        return str(folder)
    path = Path(spec).expanduser()
    if (path / RUN_MODEL_DIR / "config.json").is_file():
        origin = ((read_results(path) or {}).get("chosen") or {}).get("origin")
        if origin is not None and origin.split(":")[0] in UNMERGED_ORIGINS:
            log.warning(
                "%s chose %r, not a merge: its panel is that model's (pick a run whose "
                "results.json says origin 'child' or 'particle' to show a merged model)",
                spec,
                origin,
            )
        return str(path / RUN_MODEL_DIR)
    return spec


UNMERGED_ORIGINS = ("expert", "variant")  # a run that chose an expert or a pruned copy of one


def selected_models(cfg: DictConfig) -> dict[str, str]:
    """Model entries that are set; a null entry (a merged model not given yet) is skipped."""
    chosen = {}
    for key, spec in cfg.models.items():
        if spec is None:
            log.warning("model %r is not set (null): its panel is left out", key)
        else:
            chosen[str(key)] = str(spec)
    if not chosen:
        raise ValueError("no models to analyse: set at least one entry of `models`")
    return chosen


def _title(cfg_titles: Mapping, key: str) -> str:
    return str(cfg_titles.get(key) or key.replace("_", " "))


def main(cfg: DictConfig) -> dict[str, Any]:
    """The `analysis/landscape.py` entry: a bad setting or a missing model or folder is one line
    on stderr and exit status 2, not a traceback."""
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Compute (unless `redraw_only`) and draw; returns the contents of `landscape.json`."""
    out_dir = Path(cfg.out_dir)
    if cfg.redraw_only:
        path = out_dir / LANDSCAPE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"redraw_only=true needs a finished analysis: no {path}")
        results = json.loads(path.read_text())
    else:
        results = compute(cfg, out_dir)
    draw(results, out_dir, cfg.plots)
    return results


def compute(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Every grid of every model and task, saved under `out_dir` (on the configured threads)."""
    thread_policy.apply_threads(cfg.get("threads", thread_policy.AUTO))
    started = time.perf_counter()
    load_start = _load_average()
    unknown = sorted(set(cfg.analyses) - set(ANALYSES))
    if unknown or not cfg.analyses:
        raise ValueError(f"analyses={list(cfg.analyses)}: choose from {list(ANALYSES)}")
    device = resolve_device(cfg.device)
    directions = DirectionSpec(**cfg.directions)
    eigen = EigenSpec(**{k: v for k, v in cfg.convexity.items() if k not in ("size", "span")})
    maps = [name for name in cfg.analyses if name in MAPS]
    coords = {name: grid_coordinates(int(cfg[name].size), float(cfg[name].span)) for name in maps}
    summary = SummarySpec(**{k: v for k, v in cfg.summary.items() if k != "compare"})

    pool = instantiate(cfg.task)
    known = pool.declared_names()
    missing = [t for t in cfg.tasks if t not in known]
    if missing:
        raise ValueError(f"tasks {missing} are not in the task pool; it has {known}")
    tasks = [pool.task(name) for name in cfg.tasks]

    @cache
    def lab_root() -> Path:
        from sae_merging.lab.build import LabSpec, build_lab

        lab = OmegaConf.to_container(cfg.lab, resolve=True)
        return build_lab(LabSpec.from_dict(lab), lab["cache_dir"], cfg.progress).root

    models = {key: resolve_model(spec, lab_root) for key, spec in selected_models(cfg).items()}
    tokenizer = load_tokenizer(next(iter(models.values())))  # one tokenization for every model
    examples = {
        t.name: fixed_examples(
            t, cfg.batch.split, int(cfg.batch.size), int(cfg.batch.seed), t.name in pool.stratify
        )
        for t in tasks
    }
    batches = {name: FixedBatch.from_examples(tokenizer, ex).to(device) for name, ex in examples.items()}
    replicate_batches = {}  # task -> one batch per replicate (batch seed = replicate)
    if "summary" in cfg.analyses:
        drawn = {
            t.name: [
                fixed_examples(t, cfg.batch.split, summary.batch_size, r, t.name in pool.stratify)
                for r in range(summary.replicates)
            ]
            for t in tasks
        }
        _check_replicates_differ(drawn, summary.batch_size, cfg.batch.split)
        replicate_batches = {
            name: [FixedBatch.from_examples(tokenizer, ex).to(device) for ex in replicates]
            for name, replicates in drawn.items()
        }

    results: dict[str, Any] = {
        "format": FORMAT,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "models": {key: {"title": _title(cfg.titles, key), "path": path} for key, path in models.items()},
        "tasks": [t.name for t in tasks],
        "analyses": list(cfg.analyses),
        "batches": {
            name: {
                "size": len(b),
                "tokens": int(b.attention_mask.sum()),
                "uids": [e.uid for e in examples[name]],
            }
            for name, b in batches.items()
        },
        "grids": {t.name: {} for t in tasks},
        "loss_at_origin": {t.name: {} for t in tasks},
        "seconds": {},
        "hvps": {t.name: {} for t in tasks},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if replicate_batches:
        results["summary"] = {
            "spec": OmegaConf.to_container(cfg.summary, resolve=True),
            "measures": {t.name: {} for t in tasks},
        }
    replicates = summary.replicates if replicate_batches else 0
    per_model = (sum(len(coords[name]) ** 2 for name in maps) + replicates) * len(tasks)
    bar = tqdm(total=per_model * len(models), desc="landscape", disable=not cfg.progress, mininterval=1.0)
    shapes: dict[str, tuple[int, ...]] | None = None
    for key, path in models.items():
        model = load_model(ModelRef.parse(path), cfg.dtype, device, attn_implementation="eager")
        shapes = _check_shapes(model, shapes, key)
        d1, d2 = (model_direction(model, directions, index) for index in (0, 1))
        results["seconds"][key] = {}
        for task in tasks:
            batch, grids, seconds = batches[task.name], {}, {}
            results["loss_at_origin"][task.name][key] = task_loss(model, batch)
            if replicate_batches:
                bar.set_postfix_str(f"{key} / {task.name} / summary")
                begin = time.perf_counter()
                results["summary"]["measures"][task.name][key] = _replicates(
                    model, replicate_batches[task.name], directions, summary, eigen, bar.update
                )
                seconds["summary"] = round(time.perf_counter() - begin, 2)
            for name in maps:
                bar.set_postfix_str(f"{key} / {task.name} / {name}")
                begin = time.perf_counter()
                if name == "loss":
                    grids["loss_coords"] = coords[name]
                    grids["loss"] = loss_grid(model, batch, d1, d2, coords[name], bar.update)
                else:
                    grids["convexity_coords"] = coords[name]
                    grids.update(convexity_grid(model, batch, d1, d2, coords[name], eigen, bar.update))
                    results["hvps"][task.name][key] = {
                        "mean": float(grids["hvps"].mean()),
                        "not_converged": int((~grids["converged"]).sum()),
                    }
                seconds[name] = round(time.perf_counter() - begin, 2)
            file = Path("grids") / task.name / f"{key}.npz"
            (out_dir / file).parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out_dir / file, **grids)
            results["grids"][task.name][key] = str(file)
            results["seconds"][key][task.name] = seconds
        del model, d1, d2
    bar.close()
    if replicate_batches:
        compare = [tuple(pair) for pair in cfg.summary.compare]
        results["summary"]["intervals"] = summarize(results["summary"]["measures"], compare)
    results["total_seconds"] = round(time.perf_counter() - started, 2)
    results["load_average"] = {"start": load_start, "end": _load_average()}
    atomic_write_json(out_dir / LANDSCAPE_FILE, results)
    return results


def _check_replicates_differ(drawn: dict[str, list], batch_size: int, split: str) -> None:
    """Refuse replicates that would all score the same examples (a split no larger than the
    batch): the Hessian measures at the model do not depend on the plane, so they would repeat
    exactly, and their intervals and p-values would mean nothing."""
    for task, batches in drawn.items():
        if len(batches) > 1 and len({frozenset(e.uid for e in b) for b in batches}) == 1:
            raise ValueError(
                f"summary: every replicate scores the same {len(batches[0])} {split} examples of "
                f"{task} (summary.batch_size={batch_size} covers the split): replicates would not "
                f"vary; set summary.batch_size below {len(batches[0])} or use a larger split"
            )


def _replicates(model, batches, directions: DirectionSpec, spec: SummarySpec, eigen: EigenSpec, step) -> list:
    """The summary's measures of one model on one task, replicate r on batch r in the plane of
    direction seed r (the seed of `directions` is replaced, its normalization kept)."""
    measures = []
    for r, batch in enumerate(batches):
        plane = DirectionSpec(seed=r, normalization=directions.normalization, one_dim=directions.one_dim)
        d1, d2 = (model_direction(model, plane, index) for index in (0, 1))
        measures.append(replicate_measures(model, batch, d1, d2, spec, eigen, seed=r))
        step()
    return measures


def _load_average() -> list[float] | None:
    """The machine's load (1, 5, 15 min): other work slows the measured times."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _check_shapes(model, reference: dict | None, key: str) -> dict[str, tuple[int, ...]]:
    """Shared directions need one architecture: refuse a model whose parameters differ."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if reference is not None and shapes != reference:
        differ = sorted(set(shapes.items()) ^ set(reference.items()))[:3]
        raise ValueError(f"model {key!r} has other parameters than the first model: {differ}")
    return shapes


def summary_markdown(results: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    """summary.md: what was measured, how, on what load, then the tables."""
    spec, config = results["summary"]["spec"], results["config"]
    head = (
        f"Landscape summary: {spec['replicates']} replicates per model and task (replicate r: shared "
        f"random directions of seed r, {config['directions']['normalization']}-normalized, and a batch of "
        f"{spec['batch_size']} {config['batch']['split']} examples drawn with seed r); within a disc of "
        f"radius {spec['radius']}: quadratic fit to a {spec['grid']} x {spec['grid']} loss grid, "
        f"convexity at {spec['points']} points ({config['convexity']['solver']} solver, tol "
        f"{config['convexity']['tol']}). Cells: mean ± sample std [95% t interval]; paired rows: "
        f"difference by replicate, its interval and the paired t-test's p. "
        f"{results.get('torch_threads')} torch thread(s), load average {results.get('load_average')}, "
        f"{results.get('total_seconds')} s."
    )
    return head + "\n\n" + markdown(results["summary"]["intervals"], titles)


def draw(results: Mapping[str, Any], out_dir: Path, settings: Mapping) -> list[Path]:
    """All figures of an analysis from its saved grids."""
    config = results["config"]
    subtitle = (
        f"shared random directions (seed {config['directions']['seed']}, "
        f"{config['directions']['normalization']}-normalized), fixed batch of {config['batch']['size']} "
        f"{config['batch']['split']} examples"
    )
    formats, dpi = list(settings["formats"]), int(settings["dpi"])
    written: list[Path] = []
    if "summary" in results:
        titles = {key: model["title"] for key, model in results["models"].items()}
        path = out_dir / SUMMARY_FILE
        path.write_text(summary_markdown(results, titles))
        written.append(path)
    figures = out_dir / "figures"
    for task in results["tasks"]:
        grids = {key: np.load(out_dir / file) for key, file in results["grids"][task].items()}
        titles = {key: results["models"][key]["title"] for key in grids}
        if "loss" in results["analyses"]:
            panels = [plots.Panel(titles[k], g["loss_coords"], g["loss"]) for k, g in grids.items()]
            scale = settings["loss_scale"]
            fig = plots.loss_contour(panels, task, subtitle, scale, int(settings["levels"]))
            written += plots.save_figure(fig, figures / f"{task}_loss_contour", formats, dpi)
            fig = plots.loss_surface(panels, task, subtitle, scale)
            written += plots.save_figure(fig, figures / f"{task}_loss_surface", formats, dpi)
        if "convexity" in results["analyses"]:
            panels = [
                plots.Panel(titles[k], g["convexity_coords"], g["convexity"], ~g["converged"])
                for k, g in grids.items()
            ]
            solver = config["convexity"]["solver"]
            fig = plots.convexity_map(
                panels, task, f"{subtitle}, {solver} eigen-solver", float(config["convexity"]["clip"])
            )
            written += plots.save_figure(fig, figures / f"{task}_convexity", formats, dpi)
    return written
