"""Tests of `condense_nb.cli`: the `reproduce` runner on throwaway pipeline notebooks, and the command line."""
import hashlib, json, sys, types
from pathlib import Path

import nbformat
import pytest
import torch

from condense_nb import cli

# Tests marked `kernel` start one Jupyter kernel per executed notebook (about 1 s each here).
kernel = [pytest.mark.kernel, pytest.mark.timeout(120)]

PARAMS = 'preset = "unset"\ndata_root = "unset"\nout_dir = "unset"'

COUNT = '''
from pathlib import Path
_c = Path(data_root)/(STAGE + ".count"); _c.parent.mkdir(parents=True, exist_ok=True)
_c.write_text(str(int(_c.read_text()) + 1 if _c.exists() else 1))
'''

ALPHA = '''
import json, os
from pathlib import Path
import condense_nb
out = Path(out_dir)
(out/"seen.json").write_text(json.dumps(dict(preset=preset, data_root=data_root, out_dir=out_dir,
                                             cwd=os.getcwd(), package=condense_nb.__file__)))
(out/"figs").mkdir(exist_ok=True); (out/"figs"/"plot.png").write_bytes(b"not really a png")
(out/"run.txt").write_text(_c.read_text())             # differs from run to run: the stages reading alpha see it change
(out/"report.md").write_text("ALPHA FRAGMENT\\n\\n| k | v |\\n|---|---|\\n| a | 1 |\\n\\n![the plot](figs/plot.png)\\n"
                             '<img src="figs/plot.png" width=100>\\n')
'''

BETA = '''
import json
from pathlib import Path
(Path(out_dir)/"metrics.json").write_text(json.dumps({"acc": 0.5}))
(Path(out_dir)/"report.md").write_text("BETA FRAGMENT: see [metrics](metrics.json) and [docs](https://example.org/x.png)\\n")
'''

BAD = 'raise ValueError("boom from the pipeline")'


def write_nb(path: Path, stage: str, body: str) -> Path:
    "A pipeline notebook: a `parameters` cell with placeholder defaults, a run counter, then `body`."
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stage}"),
                nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"STAGE = {stage!r}" + COUNT),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def setup(tmp: Path, stages: dict) -> dict:
    "Write one notebook per stage into `tmp/pipelines`; return the keyword arguments of `reproduce`."
    (tmp/"pipelines").mkdir(exist_ok=True)
    registry = []
    for i, (stage, body) in enumerate(stages.items()):
        write_nb(tmp/"pipelines"/f"{i:02d}_{stage}.ipynb", stage, body)
        registry.append((stage, f"{i:02d}_{stage}.ipynb"))
    return dict(root=tmp/"data", runs=tmp/"runs", pipelines_dir=tmp/"pipelines", registry=registry,
                log_output=False, progress=False)


def count(tmp: Path, stage: str) -> int:
    f = tmp/"data"/f"{stage}.count"
    return int(f.read_text()) if f.exists() else 0


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    "One successful two-stage run, shared by the read-only checks below."
    tmp = tmp_path_factory.mktemp("ok")
    kw = setup(tmp, {"alpha": ALPHA, "beta": BETA})
    rc = cli.reproduce("tiny", **kw)
    return tmp, kw, rc


class TestRun:
    pytestmark = kernel

    def test_parameters_injected(self, ran):
        tmp, kw, rc = ran
        assert rc == 0
        seen = json.loads((tmp/"runs/tiny/alpha/seen.json").read_text())
        assert seen["preset"] == "tiny"                                   # defaults said "unset"
        assert seen["data_root"] == str((tmp/"data").resolve())
        assert seen["out_dir"] == str((tmp/"runs/tiny/alpha").resolve())
        assert Path(seen["cwd"]).resolve() == (tmp/"pipelines").resolve()  # kernel cwd = pipelines folder
        assert Path(seen["package"]).resolve() == Path(cli.__file__).resolve().parent/"__init__.py"
        executed = nbformat.read(tmp/"runs/tiny/alpha/00_alpha.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)

    def test_report_assembled(self, ran):
        tmp, kw, rc = ran
        rep = (tmp/"runs/tiny/report.md").read_text()
        assert rep.startswith("# condense-nb reproduction: preset `tiny`")
        assert "| alpha | [00_alpha.ipynb](alpha/00_alpha.ipynb) | done |" in rep
        assert "| beta | [01_beta.ipynb](beta/01_beta.ipynb) | done |" in rep
        assert "torch" in rep and "CPUs" in rep
        assert rep.index("ALPHA FRAGMENT") < rep.index("BETA FRAGMENT")     # registry order
        assert "| a | 1 |" in rep                                          # fragment tables kept
        assert "![the plot](alpha/figs/plot.png)" in rep
        assert '<img src="alpha/figs/plot.png" width=100>' in rep
        assert "[metrics](beta/metrics.json)" in rep
        assert "[docs](https://example.org/x.png)" in rep                  # absolute URL untouched
        for link in ["alpha/figs/plot.png", "beta/metrics.json", "alpha/00_alpha.ipynb"]:
            assert (tmp/"runs/tiny"/link).exists(), link                   # rewritten links resolve

    def test_done_json(self, ran):
        tmp, kw, rc = ran
        done = json.loads((tmp/"runs/tiny/beta/DONE.json").read_text())
        nb = tmp/"pipelines/01_beta.ipynb"
        assert done["sha256"] == hashlib.sha256(nb.read_bytes()).hexdigest()
        assert done["stage"] == "beta" and done["duration_s"] > 0
        assert done["parameters"]["out_dir"] == str((tmp/"runs/tiny/beta").resolve())
        assert not list((tmp/"runs/tiny/beta").glob(".*.tmp"))           # atomic write left no temp file


THREADS = """
from pathlib import Path
(Path(out_dir)/"threads.txt").write_text(str(globals().get("threads", "absent")))
"""


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_threads_reach_the_stage_but_not_done_json(tmp_path):
    kw = setup(tmp_path, {"gamma": THREADS})
    assert cli.reproduce("tiny", threads=1, **kw) == 0
    assert (tmp_path/"runs/tiny/gamma/threads.txt").read_text() == "1"
    assert "threads" not in json.loads((tmp_path/"runs/tiny/gamma/DONE.json").read_text())["parameters"]
    assert cli.reproduce("tiny", **kw) == 0 and count(tmp_path, "gamma") == 1   # other threads: still up to date


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_depends_limit_staleness_to_what_a_stage_reads(tmp_path):
    kw = setup(tmp_path, {"alpha": ALPHA, "beta": BETA, "gamma": THREADS})
    kw["depends"] = dict(beta=("alpha",), gamma=("alpha",))                  # beta and gamma are independent
    assert cli.reproduce("tiny", **kw) == 0
    assert cli.reproduce("tiny", only="beta", force=True, **kw) == 0        # beta reruns after gamma finished
    assert cli.reproduce("tiny", **kw) == 0
    assert [count(tmp_path, s) for s in ("alpha", "beta", "gamma")] == [1, 2, 1]   # gamma is not stale
    assert cli.reproduce("tiny", only="alpha", force=True, **kw) == 0
    assert cli.reproduce("tiny", **kw) == 0
    assert [count(tmp_path, s) for s in ("alpha", "beta", "gamma")] == [2, 3, 2]   # both read alpha: both rerun
    assert set(cli.DEPENDS) <= {s for s, _ in cli.PIPELINES}
    assert all(set(d) <= {s for s, _ in cli.PIPELINES[:i]} for i, (s, _) in enumerate(cli.PIPELINES) for d in [cli.DEPENDS.get(s, ())])


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_a_given_teacher_file_stands_in_for_the_teacher_stage(tmp_path):
    "`--set probes.teacher_path=F`: the stage no longer needs the teacher stage, and F's bytes (not its name) decide staleness."
    kw = setup(tmp_path, {"teacher": BETA, "probes": BETA})
    nb = nbformat.read(tmp_path/"pipelines/01_probes.ipynb", as_version=4)
    nb.cells[1].source += '\nteacher_path = ""'; nbformat.write(nb, tmp_path/"pipelines/01_probes.ipynb")
    kw["depends"] = dict(probes=("teacher",))
    with pytest.raises(cli.UsageError, match="reads stage 'teacher'"):          # no teacher file: the teacher stage must be done
        cli.reproduce("tiny", only="probes", **kw)
    with pytest.raises(cli.UsageError, match="teacher_path: .*missing.safetensors: file not found"):
        cli.reproduce("tiny", only="probes", settings=[f"probes.teacher_path={tmp_path/'missing.safetensors'}"], **kw)
    f = tmp_path/"t.safetensors"; f.write_bytes(b"weights 1")
    given = dict(only="probes", settings=[f"probes.teacher_path={f}"])
    assert cli.reproduce("tiny", **given, **kw) == 0
    assert (count(tmp_path, "teacher"), count(tmp_path, "probes")) == (0, 1)
    assert cli.reproduce("tiny", **given, **kw) == 0 and count(tmp_path, "probes") == 1      # up to date
    f.write_bytes(b"weights 2")                                                   # the same name, other weights: it reruns
    assert cli.reproduce("tiny", **given, **kw) == 0 and count(tmp_path, "probes") == 2


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_rerun_skips_done_stages(tmp_path, capsys):
    kw = setup(tmp_path, {"alpha": ALPHA, "beta": BETA})
    assert cli.reproduce("tiny", **kw) == 0
    assert (count(tmp_path, "alpha"), count(tmp_path, "beta")) == (1, 1)
    capsys.readouterr()
    assert cli.reproduce("tiny", **kw) == 0                               # everything up to date
    assert (count(tmp_path, "alpha"), count(tmp_path, "beta")) == (1, 1)
    assert capsys.readouterr().out.count("skipped") == 2
    assert "| alpha | [00_alpha.ipynb](alpha/00_alpha.ipynb) | cached |" in (tmp_path/"runs/tiny/report.md").read_text()
    assert cli.reproduce("tiny", only="beta", force=True, **kw) == 0       # --force reruns the one stage asked for
    assert (count(tmp_path, "alpha"), count(tmp_path, "beta")) == (1, 2)
    nb = nbformat.read(tmp_path/"pipelines/00_alpha.ipynb", as_version=4)  # edit alpha: it reruns, and beta after it
    nb.cells.append(nbformat.v4.new_code_cell("x = 1")); nbformat.write(nb, tmp_path/"pipelines/00_alpha.ipynb")
    assert cli.reproduce("tiny", **kw) == 0
    assert (count(tmp_path, "alpha"), count(tmp_path, "beta")) == (2, 3)


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_failing_stage_stops_with_exit_1(tmp_path, capsys):
    kw = setup(tmp_path, {"alpha": ALPHA, "bad": BAD, "after": BETA})
    assert cli.reproduce("tiny", **kw) == 1
    err = capsys.readouterr().err
    executed = (tmp_path/"runs/tiny/bad/01_bad.ipynb").resolve()
    assert "stage 'bad' failed" in err and "ValueError: boom from the pipeline" in err
    assert str(executed) in err and "Traceback" not in err
    assert "boom from the pipeline" in executed.read_text()                # the traceback is in the executed notebook
    assert not (tmp_path/"runs/tiny/bad/DONE.json").exists()
    assert count(tmp_path, "after") == 0 and not (tmp_path/"runs/tiny/after").exists()  # stopped before `after`
    rep = (tmp_path/"runs/tiny/report.md").read_text()
    assert "ALPHA FRAGMENT" in rep and "![the plot](alpha/figs/plot.png)" in rep
    assert "| bad | [01_bad.ipynb](bad/01_bad.ipynb) | failed |" in rep
    assert "| after | 02_after.ipynb | not run |" in rep and "BETA FRAGMENT" not in rep
    # fixing the notebook and rerunning resumes at the failed stage
    write_nb(tmp_path/"pipelines/01_bad.ipynb", "bad", "pass")
    assert cli.reproduce("tiny", **kw) == 0
    assert (count(tmp_path, "alpha"), count(tmp_path, "bad"), count(tmp_path, "after")) == (1, 2, 1)


def test_main_failing_stage_exit_code(tmp_path, monkeypatch):
    "`main` turns a failed stage into exit code 1 (the runner is replaced: no kernel)."
    monkeypatch.setattr(cli, "reproduce", lambda *a, **k: 1)
    assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(tmp_path)]) == 1


def test_unknown_preset_exit_2(tmp_path, capsys):
    assert cli.main(["reproduce", "--preset", "huge", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and "Traceback" not in err
    assert cli.main(["data", "--preset", "huge"]) == 2
    with pytest.raises(cli.UsageError, match="unknown preset 'huge'"): cli.reproduce("huge")
    assert not list(tmp_path.iterdir())


def test_unknown_stage_exit_2(tmp_path, capsys):
    assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(tmp_path), "--only", "data,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'nope'" in err and "data" in err and "Traceback" not in err


def test_missing_pipeline_notebook(tmp_path, monkeypatch, capsys):
    (tmp_path/"pipelines").mkdir()
    monkeypatch.setattr(cli, "PIPELINES", [("ghost", "99_ghost.ipynb")])
    monkeypatch.setattr(cli, "find_pipelines_dir", lambda: tmp_path/"pipelines")
    assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(tmp_path/"runs")]) == 1
    err = capsys.readouterr().err
    assert "stage 'ghost'" in err and "99_ghost.ipynb not found" in err and "Traceback" not in err


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "reproduce" in capsys.readouterr().out
    assert cli.main([]) == 2                                               # a subcommand is required


def test_pipelines_dir_is_in_the_repo():
    assert cli.find_pipelines_dir() == Path(cli.__file__).resolve().parent.parent/"nbs"/"pipelines"


def test_data_command_calls_build_preset(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("condense_nb.datasets")
    fake.PRESETS = {"tiny": None, "small": None, "full": None}
    fake.build_preset = lambda preset, root, progress, overwrite: calls.append((preset, root, progress, overwrite)) or Path(root)/preset
    monkeypatch.setitem(sys.modules, "condense_nb.datasets", fake)
    assert cli.main(["data", "--preset", "small", "--root", str(tmp_path)]) == 0
    assert cli.main(["data", "--preset", "small", "--root", str(tmp_path), "--overwrite"]) == 0
    assert calls == [("small", str(tmp_path), True, False), ("small", str(tmp_path), True, True)]
    assert str(tmp_path/"small") in capsys.readouterr().out


def test_rewrite_links():
    md = ("![a](x.png) [b](./sub/y.json) [c](http://h/z.png) [d](#sec) [e](/abs/f.png) ![g](../up.png 'title')\n"
          "<img src='p.png'> [r]: q.csv\n[ref]: table.csv\n```\n![not](code.png)\n```\n")
    assert cli.rewrite_links(md, "st") == (
        "![a](st/x.png) [b](st/sub/y.json) [c](http://h/z.png) [d](#sec) [e](/abs/f.png) ![g](up.png 'title')\n"
        "<img src='st/p.png'> [r]: q.csv\n[ref]: st/table.csv\n```\n![not](code.png)\n```\n")


def test_stage_is_done(tmp_path):
    nb = tmp_path/"s.ipynb"; nb.write_text("{}")
    p = {"preset": "tiny"}
    assert not cli.stage_is_done(tmp_path/"s", nb, p)
    cli.mark_done(tmp_path/"s", "s", nb, p, 2.0)
    assert cli.stage_is_done(tmp_path/"s", nb, p)
    assert not cli.stage_is_done(tmp_path/"s", nb, {"preset": "small"})
    nb.write_text("{ }")
    assert not cli.stage_is_done(tmp_path/"s", nb, p)
    assert "notebook s.ipynb changed" in cli.stage_status(tmp_path/"s", nb, p)


def test_ship_teacher_copies_weights_with_provenance(tmp_path):
    import json
    from condense_nb.cli import ship_teacher
    from condense_nb.encoders import DenseEncoder, save_encoder, load_encoder
    run = tmp_path / "runs" / "tiny"
    enc = DenseEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    save_encoder(enc, run / "teacher" / "teacher.safetensors", dict(steps=3))
    (run / "probes").mkdir(parents=True)
    (run / "probes" / "metrics.json").write_text(json.dumps({"probes": {"teacher": {"seg": {"mean": {"mIoU": 0.5}}}}}))
    dst = ship_teacher("tiny", runs=tmp_path / "runs", assets=tmp_path / "assets")
    assert dst.name == "teacher_tiny.safetensors" and dst.read_bytes() == (run / "teacher" / "teacher.safetensors").read_bytes()
    back = load_encoder(dst)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(back(x), enc(x))
    assert back.meta["probe_test"]["probes"]["teacher"]["seg"]["mean"]["mIoU"] == 0.5 and "reproduce --preset tiny" in back.meta["command"]
    with pytest.raises(ValueError, match="file not found"):
        ship_teacher("small", runs=tmp_path / "runs", assets=tmp_path / "assets")


def test_papermill_log_survives_a_closed_stdout(capsys):
    "The papermill handler looks stdout up per message: a stdout closed after the CLI ran (a test's capture) is no error."
    import io, logging
    real, dead = sys.stdout, io.StringIO()
    sys.stdout = dead
    try: cli._papermill_logging()
    finally: sys.stdout = real
    dead.close()
    log = logging.getLogger("papermill")
    log.info("line after the first stdout closed")
    cli._papermill_logging()                                                # a second call adds no second handler
    assert sum(type(h).__name__ == "_Stdout" for h in log.handlers) == 1
    out, err = capsys.readouterr()
    assert "line after the first stdout closed" in out and "Logging error" not in err


def _tiny_nb(path, code):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}}), str(path))


def test_notebooks_command_lists_checks_and_executes(tmp_path, monkeypatch, capsys):
    "`condense-nb notebooks`: a status table, --check exits 1 on stale outputs, --execute stores them, --only checks names."
    from condense_nb import notebooks as nbm
    monkeypatch.setattr(nbm, "nbs_dir", lambda: tmp_path)
    _tiny_nb(tmp_path/"01_a.ipynb", "print(6 * 7)"); _tiny_nb(tmp_path/"02_b.ipynb", "1 + 1")
    (tmp_path/"pipelines").mkdir(); _tiny_nb(tmp_path/"pipelines/00_p.ipynb", "raise SystemExit")   # not a teaching notebook
    assert cli.main(["notebooks"]) == 0
    out = capsys.readouterr().out
    assert "01_a" in out and "not executed" in out and "00_p" not in out
    assert cli.main(["notebooks", "--check"]) == 1
    assert cli.main(["notebooks", "--execute", "--only", "01_a"]) == 0
    assert nbm.output_status(tmp_path/"01_a.ipynb")["current"] and not nbm.output_status(tmp_path/"02_b.ipynb")["executed"]
    assert "42" in (tmp_path/"01_a.ipynb").read_text()
    assert cli.main(["notebooks", "--stale"]) == 0                                   # runs 02_b only
    assert cli.main(["notebooks", "--check"]) == 0
    capsys.readouterr()
    assert cli.main(["notebooks", "--only", "zz"]) == 2
    assert "no teaching notebook 'zz'" in capsys.readouterr().err
    _tiny_nb(tmp_path/"01_a.ipynb", "1 / 0")                                         # a failing notebook: exit 1, named
    assert cli.main(["notebooks", "--execute", "--only", "01_a"]) == 1
    assert "01_a.ipynb: cell 0 failed: ZeroDivisionError" in capsys.readouterr().err


def _ledger_writer(ledger, stage, go):
    from condense_nb.claims import claim_row, update_ledger
    go.wait()
    for k in range(4):
        update_ledger(ledger, stage, [claim_row(f"c{k}", "m", "a", "b", [0.5, 0.6], [0.4, 0.5], stage=stage)])


def test_concurrent_ledger_writers_lose_no_rows(tmp_path):
    "Stages of two runs sharing one ledger: every read-modify-write is serialised by the ledger's lock, so no stage's rows vanish."
    import multiprocessing as mp
    from condense_nb.claims import read_ledger
    ctx, ledger, stages = mp.get_context("fork"), tmp_path / "claims.json", [f"s{i}" for i in range(6)]
    go = ctx.Event()
    procs = [ctx.Process(target=_ledger_writer, args=(ledger, s, go)) for s in stages]
    for p in procs: p.start()
    go.set()
    for p in procs: p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(stages)
    rows = read_ledger(ledger)
    assert sorted(r["stage"] for r in rows) == stages and {r["claim"] for r in rows} == {"c3"}
    assert not (tmp_path / ".claims.json.lock").exists()


def test_claims_command_prints_and_rewrites_the_readme_block(tmp_path, capsys):
    from condense_nb.claims import claim_row, update_ledger, claims_table, read_ledger
    ledger = tmp_path / "claims.json"
    update_ledger(ledger, "probes", [claim_row("c", "test mIoU", "a", "b", [0.5, 0.6, 0.7], [0.4, 0.5, 0.6], stage="probes", scale=100)])
    assert cli.main(["claims", "--ledger", str(ledger)]) == 0
    assert claims_table(read_ledger(ledger)) in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- claims:small -->\nold\n<!-- /claims:small -->\nend\n")
    assert cli.main(["claims", "--ledger", str(ledger), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert claims_table(read_ledger(ledger)) in text and "old" not in text and text.endswith("<!-- /claims:small -->\nend\n")
    assert cli.main(["claims", "--ledger", str(ledger), "--readme", str(readme)]) == 0
    assert "already current" in capsys.readouterr().out and readme.read_text() == text
    # bad input: one line each, naming the file
    assert cli.main(["claims", "--ledger", str(tmp_path / "none.json")]) == 1
    assert "none.json: no claims ledger there" in capsys.readouterr().err
    (tmp_path / "plain.md").write_text("no markers\n")
    assert cli.main(["claims", "--ledger", str(ledger), "--readme", str(tmp_path / "plain.md")]) == 1
    assert "plain.md: expected one <!-- claims:small -->" in capsys.readouterr().err


def test_readme_claims_block_is_generated_from_the_committed_ledger():
    "README's claims table is the table of results/small/claims.json (or says there is none yet): generated, never typed."
    from condense_nb.claims import read_ledger, claims_table
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    block = text.split("<!-- claims:small -->\n")[1].split("\n<!-- /claims:small -->")[0]
    assert block == claims_table(read_ledger(root / "results" / "small" / "claims.json"))


def test_publish_command_copies_a_stage_its_rows_and_the_report(tmp_path, capsys):
    """`condense-nb publish` copies a finished stage without weights, replaces its ledger rows, rewrites README's block,
    reassembles the report; a stage published from another teacher than the published one is marked out of date."""
    from condense_nb.claims import claim_row, read_ledger, claims_table
    run, res, nb = tmp_path / "runs" / "small", tmp_path / "results" / "small", tmp_path / "x.ipynb"
    nb.write_text("{}")
    def finish(stage, payload, **inputs):
        sd = run / stage; sd.mkdir(parents=True, exist_ok=True)
        (sd / "metrics.json").write_text(json.dumps(payload)); (sd / "report.md").write_text(f"{stage} says {payload}\n")
        (sd / "weights.safetensors").write_bytes(b"w" * 64); (sd / "half.json.tmp").write_text("{")
        cli.mark_done(sd, stage, nb, dict(preset="small", data_root="/d", out_dir=str(sd), **({"shipped": True} if stage == "teacher" else {})), 90.0,
                      inputs={u: cli.outputs_digest(run / u) for u in inputs})
    finish("teacher", {"v": 1}); finish("probes", {"miou": 20.0}, teacher=1)
    row = lambda d: claim_row("the teacher beats a random ViT", "test mIoU", "teacher", "random", [0.3 + d, 0.4 + d, 0.5 + d],
                              [0.3, 0.3, 0.4], stage="probes", scale=100)
    (run / "claims.json").write_text(json.dumps([row(0.1)]))
    readme = tmp_path / "README.md"; readme.write_text("<!-- claims:small -->\nold\n<!-- /claims:small -->\n")
    for stage in ("teacher", "probes"):
        assert cli.main(["publish", "--run", str(run), "--stage", stage, "--to", str(res), "--readme", str(readme)]) == 0
    assert sorted(p.name for p in (res / "probes").iterdir()) == ["DONE.json", "metrics.json", "report.md"]
    assert read_ledger(res / "claims.json") == [row(0.1)]
    assert claims_table([row(0.1)]) in readme.read_text()
    report = (res / "report.md").read_text()
    assert "| teacher | 10_teacher.ipynb | done `shipped=True` | 1 min 30 s |" in report and "probes says {'miou': 20.0}" in report
    finish("teacher", {"v": 2})                               # a new teacher, published before the probe is re-run
    assert cli.main(["publish", "--run", str(run), "--stage", "teacher", "--to", str(res)]) == 0
    report = (res / "report.md").read_text()
    assert "| probes | 11_probes.ipynb | stale | 1 min 30 s |" in report
    assert "_Out of date: made from other outputs of 'teacher' than the published ones; rerun it._" in report
    finish("probes", {"miou": 30.0}, teacher=1); (run / "claims.json").write_text(json.dumps([row(0.2)]))
    assert cli.main(["publish", "--run", str(run), "--stage", "probes", "--to", str(res)]) == 0
    assert read_ledger(res / "claims.json") == [row(0.2)] and "| probes | 11_probes.ipynb | done |" in (res / "report.md").read_text()
    capsys.readouterr()
    # bad input: one line each
    assert cli.main(["publish", "--run", str(run), "--stage", "nope", "--to", str(res)]) == 2
    assert "--stage: unknown stage 'nope'" in capsys.readouterr().err
    assert cli.main(["publish", "--run", str(run), "--stage", "fit3d", "--to", str(res)]) == 1
    err = capsys.readouterr().err
    assert f"{run / 'fit3d'}/DONE.json: missing or unreadable: stage 'fit3d' has not finished" in err and len(err.strip().splitlines()) == 1


def test_committed_report_lists_the_published_stages_as_published_records_does():
    "results/small/report.md's stage table is what `publish` assembles from the committed stage folders (never typed)."
    root = Path(__file__).resolve().parent.parent / "results" / "small"
    text = (root / "report.md").read_text()
    rows = text.split("| stage | notebook | status | duration |\n|---|---|---|---|\n")[1].split("\n\n")[0].splitlines()
    assert {r["stage"]: r["status"] for r in cli.published_records(root)} == {l.split("|")[1].strip(): l.split("|")[3].split()[0] for l in rows}


def test_train_teacher_command(tmp_path, capsys):
    """`condense-nb train-teacher` trains the preset's recipe with --set overrides through `teacher.run` (no papermill),
    resumes on a rerun, and answers a malformed --set or an unknown field with one line."""
    from condense_nb.cli import main
    from condense_nb.encoders import load_encoder
    args = ["train-teacher", "--preset", "tiny", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "t"),
            "--set", "steps=3", "--set", "data=train", "--threads", "1"]
    assert main(args) == 0
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["steps"] == 3 and m["data"] == "train" and m["resumed_from"] == 0 and m["processes"] == 1 and m["images"] > 0
    assert m["config"]["steps"] == 3 and set(m["last10"]) >= {"loss", "dino", "ibot", "dense"}
    assert load_encoder(tmp_path / "t" / "teacher.safetensors").patch_size == 8
    assert "teacher of preset 'tiny': 3 steps" in capsys.readouterr().out
    assert main(args) == 0                                                # a rerun finds the finished run
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["resumed_from"] == 3
    assert main(args[:-4] + ["--set", "steps"]) == 2
    assert "--set: expected KEY=VALUE, got 'steps'" in capsys.readouterr().err
    assert main(args[:-4] + ["--set", "stepz=3"]) == 1
    assert "unknown TeacherConfig field(s) ['stepz']" in capsys.readouterr().err
    # with keep_every: the snapshots, and the one the val rooms choose becomes the run's teacher
    assert main(["train-teacher", "--preset", "tiny", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "k"),
                 "--set", "steps=4", "--set", "data=train", "--set", "keep_every=2", "--threads", "1"]) == 0
    sel = json.loads((tmp_path / "k" / "selection.json").read_text())
    assert sorted(sel["scores"]) == ["2", "4"] and sel["protocol"]["split"] == "val"
    assert f"chose the snapshot of step {sel['step']} on val" in capsys.readouterr().out
    chosen = tmp_path / "k" / "ckpt" / "snapshots" / f"step_{sel['step']:07d}.safetensors"
    assert (tmp_path / "k" / "teacher.safetensors").read_bytes() == chosen.read_bytes()


def test_lift_command_lifts_the_run_spec_from_either_end(tmp_path, monkeypatch, capsys):
    "`condense-nb lift --run R [--from-end]` hands fit3d.lift_from_spec the stage's spec (reversed with --from-end) and leaves the stage's file as it was."
    import condense_nb.fit3d as fit3d
    run = tmp_path / "runs" / "small"; (run / "fit3d").mkdir(parents=True)
    spec = dict(scene_ids=["r0", "r1", "r2"], out=str(run / "fit3d" / "gaussians"), threads=1, lift_config={})
    (run / "fit3d" / "lift_stage1.json").write_text(json.dumps(spec))
    seen = []
    def fake_lift(path):                                                     # a lifter that records its spec, lifts its first room
        s = json.loads(Path(path).read_text()); seen.append(s)
        Path(s["out"]).mkdir(exist_ok=True); (Path(s["out"]) / f"{s['scene_ids'][0]}.safetensors").write_bytes(b"x")
    monkeypatch.setattr(fit3d, "lift_from_spec", fake_lift)
    assert cli.main(["lift", "--run", str(run), "--from-end", "--threads", "1"]) == 0
    assert seen[-1]["scene_ids"] == ["r2", "r1", "r0"] and seen[-1]["threads"] == 1
    assert "1 of 3 rooms lifted" in capsys.readouterr().out
    assert cli.main(["lift", "--run", str(run)]) == 0
    assert seen[-1]["scene_ids"] == ["r0", "r1", "r2"] and "2 of 3 rooms lifted" in capsys.readouterr().out
    assert json.loads((run / "fit3d" / "lift_stage1.json").read_text()) == spec
    assert cli.main(["lift", "--run", str(tmp_path / "nowhere")]) == 2                  # the stage has not started there
    assert "lift_stage1.json: missing" in capsys.readouterr().err
    (run / "fit3d" / "lift_stage1.json").write_text("[1, 2]")
    assert cli.main(["lift", "--run", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Stage-1 spec" in err
