"""What `pip install evomm` installs: the `evomm*` packages, with no test helpers in them.

Tiny test models, demo stand-ins and browser driving live in `testkit/` at the repository
root (not installed); nothing under `evomm/` may need them. The wheel's package list is the
one setuptools finds from pyproject.toml's `[tool.setuptools.packages.find]`.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import setuptools

REPO = Path(__file__).resolve().parents[1]
HELPERS = ("testkit", "evomm.testing")
# modules that moved to testkit/ and must not come back into the package
MOVED = {"evomm.testing", "evomm.demo.browser", "evomm.demo.fixtures"}
_DYNAMIC = re.compile(r"""(?:import_module|__import__)\(\s*["'](?:testkit|evomm\.testing)\b[\w.]*["']""")


def wheel_packages(root: Path) -> list[str]:
    """The packages a wheel built from `root` holds (pyproject's find settings)."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    find = config["tool"]["setuptools"]["packages"]["find"]
    return setuptools.find_packages(where=str(root), include=find.get("include", ("*",)),
                                    exclude=find.get("exclude", ()))


def wheel_modules(root: Path, packages: list[str]) -> set[str]:
    return {f"{package}.{path.stem}" if path.stem != "__init__" else package
            for package in packages for path in (root / package.replace(".", "/")).glob("*.py")}


def _is_helper(module: str) -> bool:
    return any(module == h or module.startswith(h + ".") for h in HELPERS)


def helper_imports(root: Path, packages: list[str]) -> list[str]:
    """`file:line: statement` for every import of the test helpers in the wheel's modules."""
    found = []
    for package in sorted(packages):
        for path in sorted((root / package.replace(".", "/")).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(root)
            for node in ast.walk(ast.parse(text, filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                if any(_is_helper(name) for name in names):
                    found.append(f"{where}:{node.lineno}: {ast.get_source_segment(text, node)}")
            for match in _DYNAMIC.finditer(text):
                found.append(f"{where}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}")
    return found


def test_the_wheel_holds_evomm_without_test_helpers():
    packages = wheel_packages(REPO)
    # the find settings really select the product (a wrong `where` would find nothing)
    assert {"evomm", "evomm.demo", "evomm.merge", "evomm.models"} <= set(packages)
    assert all(p == "evomm" or p.startswith("evomm.") for p in packages), packages
    assert not [p for p in packages if _is_helper(p)]
    assert not MOVED & wheel_modules(REPO, packages)
    assert not list((REPO / "evomm" / "testing").glob("**/*.py"))  # stale __pycache__ aside


def test_no_installed_module_imports_the_test_helpers():
    assert helper_imports(REPO, wheel_packages(REPO)) == []


def test_testkit_stays_a_folder_beside_the_package():
    assert (REPO / "testkit" / "__init__.py").is_file()
    assert {"tiny", "tiny_processor", "merge_examples", "toy_run", "browser", "demo_fixtures"} <= {
        p.stem for p in (REPO / "testkit").glob("*.py")}
    # the helpers that find files of the checkout find them from testkit/
    from testkit import browser, tiny_processor, toy_run

    assert toy_run.TOY_CONFIG.is_file() and toy_run.ROOT == REPO
    assert (browser.REPO_ROOT / "demos" / "app.py").is_file()
    assert tiny_processor.EVAL_FIXTURE_ROOT == REPO / "runs" / "eval" / "fixture_models"


def test_the_checks_catch_helpers_inside_a_package(tmp_path):
    """The checks above on a fabricated checkout that ships and imports test helpers."""
    (tmp_path / "pyproject.toml").write_text(
        (REPO / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    for package in ("evomm", "evomm/testing", "evomm/demo", "testkit"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "evomm" / "demo" / "fixtures.py").write_text("", encoding="utf-8")
    (tmp_path / "evomm" / "evaluation.py").write_text(
        "import os\n\n\ndef build():\n    from testkit.tiny import tiny_llava\n    return tiny_llava()\n",
        encoding="utf-8")
    (tmp_path / "evomm" / "demo" / "app.py").write_text(
        "import importlib\nfrom evomm import testing\nbrowser = importlib.import_module('testkit.browser')\n",
        encoding="utf-8")

    packages = wheel_packages(tmp_path)
    assert sorted(packages) == ["evomm", "evomm.demo", "evomm.testing"]  # testkit/ is not shipped
    assert [p for p in packages if _is_helper(p)] == ["evomm.testing"]
    assert MOVED & wheel_modules(tmp_path, packages) == {"evomm.testing", "evomm.demo.fixtures"}
    assert helper_imports(tmp_path, packages) == [
        "evomm/evaluation.py:5: from testkit.tiny import tiny_llava",
        "evomm/demo/app.py:2: from evomm import testing",
        "evomm/demo/app.py:3: import_module('testkit.browser'",
    ]
