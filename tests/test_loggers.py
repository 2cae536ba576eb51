"""The W&B logger against a recording stand-in for `wandb` (no W&B process is started): curves
against the generation, the chosen model and results.json as artifacts, and `finish()` called
however a run ends."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from conftest import compose_config

from sae_merging.runtime import loggers, runner


class FakeRun:
    def __init__(self) -> None:
        self.id = "abc123"
        self.calls: list[tuple] = []
        self.summary: dict = {}

    def define_metric(self, name, **kwargs):
        self.calls.append(("define_metric", name, kwargs))

    def log(self, data, **kwargs):
        self.calls.append(("log", dict(data), kwargs))

    def log_artifact(self, artifact):
        self.calls.append(("artifact", artifact.name, artifact.type, list(artifact.entries)))

    def finish(self):
        self.calls.append(("finish",))


class FakeArtifact:
    def __init__(self, name, type):
        self.name, self.type, self.entries = name, type, []

    def add_file(self, path):
        self.entries.append(("file", path))

    def add_reference(self, uri):
        self.entries.append(("reference", uri))


@pytest.fixture
def fake_wandb(monkeypatch):
    run = FakeRun()
    module = types.SimpleNamespace(
        init=lambda **kwargs: run, Settings=lambda **kwargs: None, Artifact=FakeArtifact
    )
    monkeypatch.setitem(sys.modules, "wandb", module)
    return run


def test_metrics_against_generation_and_outputs_as_artifacts(fake_wandb, tmp_path):
    logger = loggers.WandbLogger()
    logger.start(tmp_path, {"seed": 0}, "sae-seed0")
    logger.log({"generation": 3, "fitness/best": 0.5, "best/ident": "g003-0001"})
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "model").mkdir()
    logger.log_outputs(tmp_path / "results.json", tmp_path / "model")
    logger.finish({"final/mean": 0.6})
    calls = fake_wandb.calls
    assert calls[:2] == [
        ("define_metric", "generation", {}),
        ("define_metric", "*", {"step_metric": "generation"}),
    ]
    assert calls[2] == ("log", {"generation": 3, "fitness/best": 0.5}, {})  # strings are not curves
    assert calls[3] == ("artifact", "results-abc123", "results", [("file", str(tmp_path / "results.json"))])
    assert calls[4] == ("artifact", "model-abc123", "model", [("reference", (tmp_path / "model").as_uri())])
    assert calls[5] == ("finish",) and fake_wandb.summary == {"final/mean": 0.6}


def test_finish_is_called_when_the_run_fails(fake_wandb, tmp_path, micro_lab, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_search", interrupted)
    cfg = compose_config(["experiment=smoke", "logger=wandb"])
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, Path(tmp_path) / "run")
    assert fake_wandb.calls[-1] == ("finish",)
    assert not any(call[0] == "artifact" for call in fake_wandb.calls)
