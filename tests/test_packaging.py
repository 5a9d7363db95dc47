"""The three source folders import as one namespace, `mlpl`, and the build lists every package in them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"pipeline": "mlpl", "stages": "mlpl.stages", "schemas": "mlpl.schemas"}


def test_every_package_folder_is_listed_in_the_build() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert sorted(found) == sorted(cfg["packages"])


def test_the_namespace_imports_from_the_source_folders() -> None:
    import mlpl
    import mlpl.schemas
    import mlpl.stages

    assert Path(mlpl.__file__).parent == ROOT / "pipeline"
    assert Path(mlpl.stages.__file__).parent == ROOT / "stages"
    assert Path(mlpl.schemas.__file__).parent == ROOT / "schemas"
