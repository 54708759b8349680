"""Run every notebook in `nbs/` (not `nbs/pipelines/`, which has a `.notest` file) through nbdev's test runner.

Cells flagged with a word from `tst_flags` in pyproject.toml (`notest slow cuda`) are skipped; force them with
e.g. `NBDEV_FLAGS="slow cuda" python -m pytest tests/test_notebooks.py` on a GPU machine.
"""
import os
from pathlib import Path

import pytest
import nbdev.test as nbt          # not `from nbdev.test import test_nb`: pytest would collect it as a test
from nbdev.config import get_config

CFG = get_config(Path(__file__).resolve().parent)    # found from the tests folder, whatever the cwd


def _skipped(nb: Path) -> bool:
    "nbdev's rules: names starting with `_` or `.` are skipped, and so is any folder holding a `.notest` file."
    rel = nb.relative_to(CFG.nbs_path)
    return any(s.startswith(("_", ".")) for s in rel.parts) or any((CFG.nbs_path/d/".notest").exists() for d in rel.parents)

NBS = sorted(p for p in CFG.nbs_path.rglob("*.ipynb") if not _skipped(p))
SKIP = CFG.tst_flags.split() if isinstance(CFG.tst_flags, str) else list(CFG.tst_flags)
FORCE = os.environ.get("NBDEV_FLAGS", "").split()


def test_found_notebooks():
    assert len(NBS) >= 2, f"no notebooks found under {CFG.nbs_path}"


@pytest.mark.parametrize("nb", NBS, ids=[str(p.relative_to(CFG.nbs_path)) for p in NBS])
def test_notebook(nb):
    ok, _ = nbt.test_nb(nb, skip_flags=SKIP, force_flags=FORCE, basepath=CFG.config_path,
                        cell_timeout=CFG.cell_timeout)
    assert ok, f"{nb.name} failed (the cell and its traceback are printed above)"


def test_nbdev_docs_preprocessing_passes():
    """`nbdev-proc-nbs` (what `nbdev-docs` runs before quarto) executes every export, `show_doc` and import-holding cell
    of every notebook; it fails when such a cell needs a test cell's variables. Called as a function: no quarto needed."""
    from nbdev.serve import proc_nbs
    cache = proc_nbs(str(CFG.nbs_path), n_workers=1, force=True)
    assert (Path(cache)/"index.ipynb").exists() and len(list(Path(cache).glob("*.ipynb"))) == len(NBS) - len(
        [p for p in NBS if p.parent != CFG.nbs_path])
