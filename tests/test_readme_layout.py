"""The README's layout section names what the tree holds: every package of src/sae_merging,
every script of analysis/ and experiments/, and every top-level folder."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_every_package_and_script_is_named():
    layout = _layout()
    packages = sorted(p.parent.name for p in (ROOT / "src" / "sae_merging").glob("*/__init__.py"))
    scripts = sorted(p.name for folder in ("analysis", "experiments") for p in (ROOT / folder).glob("*.py"))
    folders = sorted(
        p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "outputs"
    )
    missing = [f"{name}/" for name in packages + folders if f"{name}/" not in layout]
    missing += [name for name in scripts if name not in layout]
    assert not missing, f"README.md's layout does not name: {missing}"
