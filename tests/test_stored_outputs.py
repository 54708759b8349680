"""The teaching notebooks in `nbs/` store their outputs, computed from the code they hold now.

A reader opening a notebook (in JupyterLab, on GitHub, on the docs site) sees its figures and printed checks
without running anything. After editing a notebook's code, regenerate its outputs with
`condense-nb notebooks --stale` (or `--execute --only NAME`); `condense-nb notebooks` lists what is stored.
"""
import json

import pytest

from condense_nb.notebooks import teaching_notebooks, output_status, code_digest, draws, PLOTLY_MIME

NBS = teaching_notebooks()
IDS = [p.stem for p in NBS]
FIX = "regenerate with `condense-nb notebooks --execute --only {}`"


def test_found_the_teaching_notebooks():
    assert len(NBS) >= 25 and all(p.parent.name == "nbs" for p in NBS)


@pytest.mark.parametrize("nb", NBS, ids=IDS)
def test_outputs_are_current(nb):
    s = output_status(nb)
    assert s["executed"], f"{nb.name} stores no executed outputs: " + FIX.format(nb.stem)
    assert s["current"], f"{nb.name}: its code changed after its outputs were stored: " + FIX.format(nb.stem)
    assert s["errors"] == 0, f"{nb.name} stores an error output: " + FIX.format(nb.stem)


@pytest.mark.parametrize("nb", NBS, ids=IDS)
def test_a_notebook_that_draws_stores_a_figure(nb):
    s = output_status(nb)
    if not s["draws"]: pytest.skip(f"{nb.name} draws nothing")
    assert s["images"] + s["plotly"] >= 1, f"{nb.name} draws but stores no figure: " + FIX.format(nb.stem)


@pytest.mark.parametrize("nb", NBS, ids=IDS)
def test_outputs_are_lean(nb):
    "PNG figures and plotly JSON, not plotly.js (4.8 MB) or widget state; a few MB at most per notebook."
    d = json.loads(nb.read_text(encoding="utf-8"))
    outs = json.dumps([c.get("outputs", []) for c in d["cells"]])
    assert "widgets" not in d["metadata"] and "application/vnd.jupyter.widget-view+json" not in outs
    assert "plotly.js v" not in outs and 'define(\\"plotly\\"' not in outs, f"{nb.name} embeds plotly.js"
    assert nb.stat().st_size < 3_000_000, f"{nb.name} is {nb.stat().st_size / 1e6:.1f} MB"


def test_the_fingerprint_reads_the_code_cells_only():
    "The check above can fail: changing a code cell changes the fingerprint; prose does not."
    nb = json.loads(NBS[0].read_text(encoding="utf-8"))
    d = code_digest(nb)
    md = next(c for c in nb["cells"] if c["cell_type"] == "markdown"); md["source"] = ["changed prose"]
    assert code_digest(nb) == d
    code = next(c for c in nb["cells"] if c["cell_type"] == "code"); code["source"] = code["source"] + ["\n# edit"]
    assert code_digest(nb) != d
