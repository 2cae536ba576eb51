"""Loss landscape and Hessian convexity analysis: known answers on tiny problems, then the
Hydra app end to end on the micro lab."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from torch import nn

from sae_merging.analysis import landscape_report
from sae_merging.analysis.directions import DirectionSpec, model_direction, normalize, raw_direction
from sae_merging.analysis.hessian import (
    EigenSpec,
    HessianOperator,
    convexity,
    convexity_grid,
    extreme_eigenvalues,
)
from sae_merging.analysis.loss_plane import FixedBatch, fixed_examples, grid_coordinates, loss_grid
from sae_merging.models.io import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EIGENVALUES = np.array([-3.0, -1.0, -0.5, 0.2, 1.0, 2.0, 4.0, 7.0])


class Quadratic(nn.Module):
    """loss(x) = 0.5 x^T A x, whose Hessian is A everywhere."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.x @ a @ self.x


def _symmetric(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues), len(eigenvalues))))
    return torch.from_numpy(q @ np.diag(eigenvalues) @ q.T)


def _quadratic_operator(a: torch.Tensor) -> HessianOperator:
    return HessianOperator(Quadratic(a.shape[0]), lambda loss, _: loss, a, torch.zeros(1))


def test_hvp_of_quadratic_is_the_matrix():
    a = _symmetric(EIGENVALUES)
    with _quadratic_operator(a) as op:
        dense = np.stack([op.matvec(column) for column in np.eye(len(EIGENVALUES))], axis=1)
    np.testing.assert_allclose(dense, a.numpy(), atol=1e-12)


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_extreme_eigenvalues_of_quadratic(solver):
    a = _symmetric(EIGENVALUES)
    expected = np.linalg.eigvalsh(a.numpy())
    with _quadratic_operator(a) as op:
        found = extreme_eigenvalues(op, EigenSpec(solver=solver, tol=1e-10, ncv=6, power_iters=2000))
    assert found.converged and found.hvps > 0
    assert found.lambda_min == pytest.approx(expected[0], rel=1e-6)
    assert found.lambda_max == pytest.approx(expected[-1], rel=1e-6)


def test_power_solver_when_the_negative_end_dominates():
    values = np.array([-9.0, -1.0, 0.5, 2.0, 3.0])
    with _quadratic_operator(_symmetric(values, seed=3)) as op:
        found = extreme_eigenvalues(op, EigenSpec(solver="power", tol=1e-12, power_iters=3000))
    assert found.lambda_min == pytest.approx(-9.0, rel=1e-6)
    assert found.lambda_max == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([-2.0, -1.0, 0.5, 3.0, 8.0], 0.25),  # |-2| / 8
        ([1.0, 2.0, 3.0, 4.0, 10.0], 0.1),  # positive definite: lambda_min / lambda_max
        ([-10.0, -3.0, 0.0, 0.5, 1.0], 0.5),  # 10 / 1, clipped
        ([0.0, 0.0, 1.0, 2.0, 5.0], 0.0),  # positive semi-definite
    ],
)
def test_convexity_of_known_matrices(values, expected):
    with _quadratic_operator(_symmetric(np.array(values))) as op:
        found = extreme_eigenvalues(op, EigenSpec(tol=1e-10, ncv=5))
    value = convexity(found.lambda_min, found.lambda_max, eps=1e-9, clip=0.5)
    assert value == pytest.approx(expected, abs=1e-6)


def test_convexity_formula_edge_cases():
    values = convexity(np.array([-3.0, np.nan, 0.0]), np.array([0.0, 1.0, 0.0]), eps=1e-6, clip=0.5)
    assert values[0] == 0.5 and np.isnan(values[1]) and values[2] == 0.0  # eps: no division by zero


def _toy() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 5), nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight[2] = 0.0  # a pruned row
    return model


def test_filter_normalization_matches_the_models_norms():
    model = _toy()
    direction = model_direction(model, DirectionSpec(seed=5), 0)
    params = dict(model.named_parameters())
    assert set(direction) == set(params)
    for name, weight in params.items():
        d = direction[name]
        assert d.shape == weight.shape and d.dtype == weight.dtype
        if weight.ndim == 1:
            assert torch.count_nonzero(d) == 0  # Li et al.: biases and norm weights left out
        else:
            torch.testing.assert_close(d.norm(dim=1), weight.detach().norm(dim=1), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(d.norm(), weight.detach().norm(), rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(direction["1.weight"][2]) == 0


def test_layer_normalization_and_one_dim_option():
    model = _toy()
    spec = DirectionSpec(normalization="layer", one_dim="layer")
    for name, d in model_direction(model, spec, 1).items():
        weight = dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(d.norm(), weight.norm(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="normalization"):
        DirectionSpec(normalization="row")


def test_directions_are_shared_across_models():
    """Same raw draw for every model; each is scaled to its own weights."""
    first, second = _toy(), _toy()
    with torch.no_grad():
        for p in second.parameters():
            p.mul_(3.0)
    d_first, d_second = (model_direction(m, DirectionSpec(seed=2), 0) for m in (first, second))
    torch.testing.assert_close(d_second["3.weight"], 3.0 * d_first["3.weight"])
    assert not torch.equal(raw_direction("3.weight", (3, 4), 2, 0), raw_direction("3.weight", (3, 4), 2, 1))
    assert torch.equal(raw_direction("3.weight", (3, 4), 2, 0), raw_direction("3.weight", (3, 4), 2, 0))
    assert torch.count_nonzero(normalize(torch.ones(3), torch.ones(3), DirectionSpec())) == 0


def test_grid_coordinates_have_the_origin_in_the_middle():
    coords = grid_coordinates(7, 1.0)
    assert coords[3] == 0.0 and coords[0] == -1.0 and coords[-1] == 1.0
    with pytest.raises(ValueError):
        grid_coordinates(0, 1.0)


@pytest.fixture(scope="module")
def micro_model(micro_lab):
    tokenizer = load_tokenizer(micro_lab.experts["math"])
    model = load_model(micro_lab.experts["math"], attn_implementation="eager")
    task = next(t for t in micro_lab.tasks() if t.name == "lab-math")
    batch = FixedBatch.from_examples(tokenizer, fixed_examples(task, "test", 4, 0, False))
    return model, batch


def test_loss_at_origin_is_the_models_loss(micro_model):
    model, batch = micro_model
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    d1, d2 = (model_direction(model, DirectionSpec(), i) for i in (0, 1))
    grid = loss_grid(model, batch, d1, d2, grid_coordinates(3, 0.5))
    assert grid[1, 1] == pytest.approx(own.item(), rel=1e-6)
    assert np.isfinite(grid).all() and (np.delete(grid.ravel(), 4) > grid[1, 1]).any()


@pytest.mark.slow  # a 3 x 3 convexity grid: about two minutes on 2 idle cores
def test_weights_are_restored_bit_exactly(micro_model):
    model, batch = micro_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d1, d2 = (model_direction(model, DirectionSpec(), i) for i in (0, 1))
    coords = grid_coordinates(3, 0.7)
    loss_grid(model, batch, d1, d2, coords)
    grids = convexity_grid(model, batch, d1, d2, coords, EigenSpec(tol=1e-2, ncv=6))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert grids["convexity"].shape == (3, 3) and (grids["hvps"] > 0).all()
    assert np.all((grids["convexity"] >= 0) & (grids["convexity"] <= 0.5))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="analysis/landscape", overrides=overrides)


@pytest.mark.slow  # the whole landscape app: over a minute on 2 loaded cores
def test_app_end_to_end_and_redraw(micro_lab, tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "pso-run"  # a run folder: its model/ is used
    shutil.copytree(micro_lab.base, run_dir / "model")
    out = tmp_path / "analysis"
    overrides = [
        "lab=micro",
        f"out_dir={out}",
        "loss.size=3",
        "convexity.size=3",
        "batch.size=4",
        "convexity.ncv=6",
        "convexity.max_restarts=5",
        "summary.replicates=2",
        "summary.batch_size=4",
        "summary.grid=5",
        "summary.points=1",
        "progress=false",
        f"models.pso_merged={run_dir}",
    ]
    landscape_report.main(_compose(overrides))
    results = json.loads((out / landscape_report.LANDSCAPE_FILE).read_text())
    assert list(results["models"]) == ["math_expert", "multilingual_expert", "pso_merged"]
    assert "sae_merged" in caplog.text  # null entry skipped with a warning
    assert results["models"]["pso_merged"]["path"] == str(run_dir / "model")
    for task in ("lab-math", "lab-multilingual"):
        for key, file in results["grids"][task].items():
            grids = np.load(out / file)
            assert grids["loss"].shape == (3, 3) and grids["convexity"].shape == (3, 3)
            assert grids["loss"][1, 1] == pytest.approx(results["loss_at_origin"][task][key], rel=1e-6)
        for kind in ("loss_contour", "loss_surface", "convexity"):
            for fmt in ("png", "pdf"):
                assert (out / "figures" / f"{task}_{kind}.{fmt}").stat().st_size > 0
    assert results["batches"]["lab-math"]["size"] == 4
    assert set(results["summary"]["intervals"]["lab-math"]["paired"]) == {
        "pso_merged - math_expert",
        "pso_merged - multilingual_expert",
    }
    assert (out / landscape_report.SUMMARY_FILE).stat().st_size > 0

    shutil.rmtree(out / "figures")
    (out / landscape_report.SUMMARY_FILE).unlink()
    monkeypatch.setattr(landscape_report, "compute", lambda *a: pytest.fail("redraw must not recompute"))
    redraw = [f"out_dir={out}", "redraw_only=true", "plots.loss_scale=linear", "plots.formats=[png]"]
    landscape_report.run(_compose(redraw))
    assert (out / "figures" / "lab-math_convexity.png").is_file()
    assert not (out / "figures" / "lab-math_convexity.pdf").exists()
    assert (out / landscape_report.SUMMARY_FILE).is_file()  # redrawn from landscape.json


def test_app_refuses_unknown_settings(tmp_path):
    with pytest.raises(ValueError, match="analyses"):
        landscape_report.run(_compose(["lab=micro", f"out_dir={tmp_path}", "analyses=[hessian]"]))
    with pytest.raises(FileNotFoundError, match="redraw_only"):
        landscape_report.run(_compose([f"out_dir={tmp_path / 'none'}", "redraw_only=true"]))


def test_command_reports_bad_settings_in_one_line(tmp_path):
    """`python analysis/landscape.py` with a bad setting: exit status 2, one line naming it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "analysis/landscape.py", "redraw_only=true", f"out_dir={tmp_path / 'none'}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: redraw_only=true needs")
    assert "Traceback" not in result.stderr


def test_a_log_colour_bar_within_one_decade_has_labelled_ticks():
    """Losses from 0.6 to 3.8 span less than a decade: the bar still says what its colours are
    (a decade locator labelled nothing), on the contour and the surface alike."""
    import numpy as np

    from sae_merging.analysis import plots

    coords = np.linspace(-1, 1, 5)
    a, b = np.meshgrid(coords, coords)
    panels = [plots.Panel("m", coords, 0.6 + 3.2 * (a**2 + b**2) / 2)]
    for figure in (plots.loss_contour(panels, "t", "s"), plots.loss_surface(panels, "t", "s")):
        figure.canvas.draw()
        labels = [t.get_text() for t in figure.axes[-1].get_yticklabels() if t.get_text()]
        assert labels == ["0.6", "0.952", "1.51", "2.4", "3.8"], labels  # 0.6 * (3.8 / 0.6) ** (k / 4)
