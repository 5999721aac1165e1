"""The locks the README's commands install from: complete, exact, consistent with pyproject.toml.

`requirements.lock` is what a user's `pip install -c requirements.lock -e ".[all]"` gets;
`requirements-test.lock` adds the test tools. Both come from `bash scripts/lock.sh`.
"""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, Version]:
    """name -> version of every pin that applies to this interpreter and platform."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier  # exactly one specifier per line ...
        assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"  # ... and exact
        pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for group in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in group if not r.startswith("evomm[")]
    return requirements


@pytest.fixture(scope="module")
def lock():
    return _pins(ROOT / "requirements.lock")


@pytest.fixture(scope="module")
def test_lock():
    return _pins(ROOT / "requirements-test.lock")


def test_every_dependency_is_locked_inside_its_range(lock, test_lock):
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        locked = test_lock if name in {"pytest", "mergekit", "playwright"} else lock
        assert name in locked, f"{name} is declared in pyproject.toml but not locked"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} is locked but pyproject.toml asks {requirement.specifier}")


def test_torch_is_locked_at_the_wheels_of_our_machines(lock):
    pins = {canonicalize_name(Requirement(l).name): Requirement(l).specifier
            for l in (ROOT / "constraints.txt").read_text().splitlines() if l.strip() and not l.startswith("#")}
    assert set(pins) == {"torch", "torchvision"}
    for name, spec in pins.items():
        assert spec.contains(lock[name]), f"{name} locked at {lock[name]}, constraints.txt says {spec}"


def test_test_tools_move_no_version_the_user_gets(lock, test_lock):
    moved = {n: (v, test_lock.get(n)) for n, v in lock.items() if test_lock.get(n) != v}
    assert not moved, f"requirements-test.lock changes user packages: {moved}"


def test_the_running_environment_is_the_locked_one(test_lock):
    # scripts/test.sh installs from requirements-test.lock: what runs the tests is what was locked
    # (run this suite from another environment and this test says how it differs)
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in importlib.metadata.distributions()}
    core = ["torch", "transformers", "diffusers", "gradio", "ray", "accelerate", "open-clip-torch", "numpy"]
    differ = {n: (str(installed.get(n)), str(test_lock[n])) for n in core if installed.get(n) != test_lock[n]}
    assert not differ, f"installed vs locked: {differ}"


def test_lock_script_names_the_lock_files():
    script = (ROOT / "scripts" / "lock.sh").read_text()
    assert re.search(r"-o requirements\.lock\b", script) and "-o requirements-test.lock" in script
    readme = (ROOT / "README.md").read_text()
    assert "-c requirements.lock" in readme and "bash scripts/lock.sh" in readme
