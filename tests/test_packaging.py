"""pyproject lists every Python package and data folder, so a plain (non-editable) `pip install .` ships them all."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    found = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    return found


def test_every_package_folder_is_listed():
    # An explicit list (the stage folders map onto one package) silently drops a subpackage nobody adds to it.
    missing = _packages_on_disk() - set(SETUPTOOLS["packages"])
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_every_listed_package_exists():
    assert set(SETUPTOOLS["packages"]) <= _packages_on_disk()


def test_package_data_patterns_match_files():
    for package, patterns in SETUPTOOLS["package-data"].items():
        for pattern in patterns:
            assert list(_folder_of(package).glob(pattern)), f"{package}: package-data pattern {pattern!r} matches no file"


def _folder_of(package: str) -> Path:
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = SETUPTOOLS["package-dir"].get(".".join(parts[:cut]))
        if mapped is not None:
            return ROOT / mapped / Path(*parts[cut:])
    raise AssertionError(f"{package} has no package-dir")


def test_every_data_file_is_shipped():
    # The code reads these at run time (the default model, schemas); a file outside package-data works in the
    # editable checkout and is missing from a wheel.
    shipped = {
        path
        for package, patterns in SETUPTOOLS["package-data"].items()
        for pattern in patterns
        for path in _folder_of(package).glob(pattern)
    }
    unshipped = [
        str(path.relative_to(ROOT))
        for folder in SETUPTOOLS["package-dir"].values()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
        and path not in shipped
    ]
    assert not unshipped, f"add to [tool.setuptools.package-data] in pyproject.toml: {sorted(unshipped)}"
