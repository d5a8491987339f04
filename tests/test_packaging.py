"""The installed layout: methods/ and teachers/ live under sidbench, nothing generic at top level."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_installation() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {v: k for k, v in project["package-dir"].items()}  # folder -> import name
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        top, rest = rel.parts[0], rel.parts[1:]
        if top in mapping:
            found.add(".".join([mapping[top], *rest]))
    assert found == set(project["packages"])
    assert all(name == "sidbench" or name.startswith("sidbench.") for name in project["packages"])


def test_folders_import_under_sidbench() -> None:
    import sidbench.methods.baselines
    import sidbench.methods.sid
    import sidbench.teachers

    assert Path(sidbench.methods.sid.__file__).parent == ROOT / "methods" / "sid"
    assert Path(sidbench.teachers.__file__).parent == ROOT / "teachers"
