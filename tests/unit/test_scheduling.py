"""The parallel run (`make test`, tests/conftest.py) must keep every shared test bed on one worker."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import LONGEST_FIRST, SHARED_FIXTURE_UNITS, work_unit

ROOT = Path(__file__).resolve().parents[2]
E2E_MODULES = sorted([*(ROOT / "tests" / "e2e").glob("test_*.py"), *(ROOT / "tests" / "faults").glob("test_*.py")])


def uses_the_main_bed(module: Path) -> bool:
    """True when the module's tests take the session `deployment` of tests/e2e/conftest.py,
    i.e. they ask for `deployment` and the module does not define its own."""
    tree = ast.parse(module.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    defines = any(f.name == "deployment" for f in functions)
    asks = any(a.arg == "deployment" for f in functions if f.name.startswith("test_") for a in f.args.args)
    return asks and not defines


def test_every_module_on_the_main_bed_is_in_its_unit_and_no_other():
    on_main = {m.relative_to(ROOT).as_posix() for m in E2E_MODULES if uses_the_main_bed(m)}
    assert on_main == set(SHARED_FIXTURE_UNITS["main-bed"])
    for module in E2E_MODULES:
        name = module.relative_to(ROOT).as_posix()
        expected = "main-bed" if name in on_main else name
        assert work_unit(f"{name}::test_x") == expected


def test_other_modules_are_their_own_unit():
    assert work_unit("tests/unit/test_settings.py::test_a[x::y]") == "tests/unit/test_settings.py"
    assert work_unit("tests/e2e/test_rotation.py::test_1") == "tests/e2e/test_rotation.py"


def test_every_e2e_unit_is_ranked_so_none_is_left_for_the_end_of_the_run():
    units = {work_unit(f"{m.relative_to(ROOT).as_posix()}::test_x") for m in E2E_MODULES}
    assert units == set(LONGEST_FIRST)
