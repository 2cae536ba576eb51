"""Faults and misuse lose nothing: inputs are never written, resume checks what it resumes, one
writer per run folder, sweeps survive one bad job, storage errors are one line (issue 25)."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from sae_merging.utils import paths

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "merge_checkpoints", ROOT / "experiments" / "merge_checkpoints.py"
)
merge_checkpoints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(merge_checkpoints)


def _digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def models(micro_lab, tmp_path) -> dict[str, Path]:
    """Copies of the micro lab's base and experts (tests may try to write over them)."""
    root = tmp_path / "M"
    found = {"base": Path(micro_lab.base), **{k: Path(v) for k, v in micro_lab.experts.items()}}
    return {name: Path(shutil.copytree(path, root / name)) for name, path in found.items()}


def _merge(models: dict[str, Path], out, overwrite: bool = False) -> Path:
    experts = [str(p) for name, p in models.items() if name != "base"]
    return merge_checkpoints.merge_checkpoints(str(models["base"]), experts, out, 0.5, overwrite=overwrite)


def _main(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["merge_checkpoints.py", *arguments])
    with pytest.raises(SystemExit) as done:
        merge_checkpoints.main()
    return done.value.code, capsys.readouterr().err


# --- 1. inputs are sacred ---------------------------------------------------------------------


def _out_cases(models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    base, expert = models["base"], next(p for n, p in models.items() if n != "base")
    (tmp_path / "link").symlink_to(base)
    hard = tmp_path / "hard"
    hard.mkdir()
    os.link(base / "model.safetensors", hard / "model.safetensors")
    return {
        "the base": base,
        "an expert": expert,
        "a path with ..": expert / ".." / base.name,
        "a symlink to the base": tmp_path / "link",
        "inside the base": base / "sub",
        "a folder holding the models": base.parent,
        "a hard link to the base's weights": hard,
    }


@pytest.mark.parametrize(
    "case",
    [
        "the base",
        "an expert",
        "a path with ..",
        "a symlink to the base",
        "inside the base",
        "a folder holding the models",
        "a hard link to the base's weights",
    ],
)
def test_merge_refuses_an_output_over_its_inputs(case, models, tmp_path, monkeypatch, capsys):
    out = _out_cases(models, tmp_path)[case]
    before = {name: _digest(path) for name, path in models.items()}
    experts = [str(p) for n, p in models.items() if n != "base"]
    code, err = _main(
        monkeypatch, capsys, "--base", str(models["base"]), "--experts", *experts, "--scale", "0.5",
        "--out", str(out), "--overwrite",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "input" in err and "--out" in err, err
    assert {name: _digest(path) for name, path in models.items()} == before


def test_merge_refuses_a_folder_holding_files_unless_overwrite(models, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match=r"already holds files \(notes.txt\).*--overwrite"):
        _merge(models, out)
    assert _digest(out) == {"notes.txt": hashlib.sha256(b"a user's file").hexdigest()}
    fresh = _merge(models, tmp_path / "fresh")
    _merge(models, out, overwrite=True)
    # the merge's files replaced, the user's file kept
    assert (out / "notes.txt").read_text() == "a user's file"
    assert {k: v for k, v in _digest(out).items() if k != "notes.txt"} == _digest(fresh)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_merge_on_a_full_disk_is_one_line_and_writes_nothing(models, tmp_path, monkeypatch, capsys):
    from sae_merging.merging import streaming

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(streaming, "stream_task_arithmetic", full)
    experts = [str(p) for n, p in models.items() if n != "base"]
    code, err = _main(
        monkeypatch,
        capsys,
        "--base",
        str(models["base"]),
        "--experts",
        *experts,
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and err.count("\n") == 1 and "no space left" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M"]  # no output, no temporary folder


def test_leftovers_of_a_killed_merge_are_removed(models, tmp_path):
    killed = tmp_path / ".merged.abc123.tmp"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".other.abc123.tmp"
    other.mkdir()
    _merge(models, tmp_path / "merged")
    assert not killed.exists() and other.exists()  # another output's leftovers are not its business


def test_an_output_folder_around_an_input_file_is_refused(tmp_path):
    weights = tmp_path / "a" / "b.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"w")
    assert "contains the input --x" in paths.overlap_problems(tmp_path / "a", {"--x": weights}, "--out")[0]
    assert "is the input --x" in paths.overlap_problems(weights, {"--x": weights}, "--out")[0]
    assert paths.overlap_problems(tmp_path / "c", {"--x": weights}, "--out") == []
