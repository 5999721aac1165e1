"""Helpers for the tests, benchmarks, screenshots and smoke runs, kept out of the installed package.

Tiny real-class checkpoints (`tiny`, `tiny_processor`, `merge_examples`), a shortened toy run
(`toy_run`), the demo's stand-in inputs and fabricated runs (`demo_fixtures`) and headless
browser driving (`browser`) exist only so this repository can test and illustrate itself: a
user who installs `evomm` never needs them, so they live here, outside `evomm/` (the wheel
holds only `evomm*`, see pyproject.toml), and nothing under `evomm/` may import them
(tests/test_package_contents.py checks both). Use them from a checkout: tests/conftest.py
puts the repository root on `sys.path`, and each script under benchmarks/, demos/ and assets/
does the same before importing `testkit.X`.
"""
