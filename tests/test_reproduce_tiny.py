"""End to end: `condense-nb reproduce --preset tiny` for the registered 2D stages (data, teacher, probes),
through papermill, asserting on what each stage wrote (not on return codes alone)."""
import json, math
import pytest
from condense_nb.cli import reproduce

STAGES = "data,teacher,probes"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    rc = reproduce("tiny", root=base / "data", runs=base / "runs", only=STAGES, progress=False, log_output=False)
    return rc, base


@pytest.mark.kernel
def test_reproduce_tiny_writes_every_stage(tiny_run):
    rc, base = tiny_run
    run = base / "runs" / "tiny"
    assert rc == 0
    for stage in STAGES.split(","):
        assert (run / stage / "DONE.json").exists() and (run / stage / "report.md").exists()
        json.loads((run / stage / "metrics.json").read_text())
    report = (run / "report.md").read_text()
    # the teacher exists and is loadable; the probe table has all three rows with finite numbers
    from condense_nb.encoders import load_encoder
    enc = load_encoder(run / "teacher" / "teacher.safetensors")
    assert enc.patch_size == 8
    probes = json.loads((run / "probes" / "metrics.json").read_text())
    for row in ("RGB pixels", "random-init ViT", "teacher"):
        assert f"| {row} |" in report
        for m in ("mIoU", "mAcc", "aAcc"): assert 0 <= probes["probes"][row]["seg"]["mean"][m] <= 1
        for m in ("rmse", "abs_rel", "delta1"): assert math.isfinite(probes["probes"][row]["depth"]["mean"][m])
        assert -1 <= probes["consistency"][row]["mean"]["cos_sim"] <= 1
    assert probes["teacher"].endswith("teacher.safetensors")       # the run's own teacher, not the shipped one
    pos = probes["positional"]["probes"]                            # the layout-prior baseline and the heads with a position bias
    assert set(pos) == {"position only", "RGB pixels", "random-init ViT", "teacher"}
    h, w = probes["probes"]["teacher"]["feature_shape"][1:]
    assert pos["position only"]["feature_shape"] == [h * w, h, w] and pos["RGB pixels"]["feature_shape"][1:] == [h, w]
    assert "| position only |" in (run / "probes" / "report.md").read_text()
    for fig in ("data/views.png", "teacher/loss.png", "teacher/pca.png", "probes/predictions.png"):
        assert (run / fig).stat().st_size > 1000


@pytest.mark.kernel
def test_reproduce_tiny_rerun_skips_finished_stages(tiny_run, capsys):
    rc, base = tiny_run
    before = {p: p.stat().st_mtime for p in (base / "runs" / "tiny").glob("*/metrics.json")}
    assert reproduce("tiny", root=base / "data", runs=base / "runs", only=STAGES, progress=False, log_output=False) == 0
    after = {p: p.stat().st_mtime for p in (base / "runs" / "tiny").glob("*/metrics.json")}
    assert before == after                                              # nothing re-executed


@pytest.mark.kernel
def test_reproduce_tiny_claims_ledger(tiny_run):
    """The probes stage writes the teacher precondition to runs/tiny/claims.json; its paired difference is the mean
    over test rooms of the per-room scores stored in metrics.json (recomputed here), and the report shows the table."""
    import numpy as np
    from condense_nb.claims import VERDICTS, ROW_KEYS
    rc, base = tiny_run
    run = base / "runs" / "tiny"
    rows = json.loads((run / "claims.json").read_text())
    assert [r["stage"] for r in rows] == ["probes", "probes"] and all(tuple(r) == ROW_KEYS for r in rows)
    probes = json.loads((run / "probes" / "metrics.json").read_text())["probes"]
    for r, (task, key) in zip(rows, (("seg", "mIoU"), ("depth", "rmse"))):
        per = {n: np.array([s["per_unit"][key] for s in probes[n][task]["per_seed"]]) for n in ("teacher", "random-init ViT")}
        assert per["teacher"].shape == (3, 2)                       # seeds × the 2 test rooms of `tiny`
        assert math.isclose(r["diff"], float((per["teacher"].mean(0) - per["random-init ViT"].mean(0)).mean()), abs_tol=1e-12)
        assert r["n_units"] == 2 and r["verdict"] in VERDICTS and r["ci_low"] <= r["diff"] <= r["ci_high"]
    assert rows[1]["direction"] == -1                               # depth RMSE: lower is better
    assert "| **" in (run / "claims.md").read_text()
    report = (run / "report.md").read_text()
    assert "## Claims" in report and rows[0]["claim"] in report


@pytest.mark.kernel
def test_probe_stage_run_without_papermill(tiny_run, tmp_path):
    """`condense_nb.probe_stage.run` called directly on the same tiny data and teacher, one seed: the heads it keeps are
    those whose test metrics it reports (recomputed here through their whitening), and the ledger gets both rows."""
    import torch
    from condense_nb.encoders import load_encoder
    from condense_nb.probe_stage import ProbeStageConfig, run
    from condense_nb.probes import probe_input, predict_seg
    from condense_nb.features import extract_features
    from condense_nb.metrics import segmentation_metrics
    from condense_nb.scenes import CLASSES
    _, base = tiny_run
    teacher = load_encoder(base / "runs" / "tiny" / "teacher" / "teacher.safetensors")
    kept = {}
    m = run(ProbeStageConfig.from_preset("tiny", seeds=(0,), epochs=3), base / "data", tmp_path / "probes", teacher, "tiny teacher",
            data_preset="tiny", ledger=tmp_path / "claims.json", keep=kept)
    assert set(m["probes"]) == {"RGB pixels", "random-init ViT", "teacher"} and m["seeds"] == [0]
    assert [r["baseline"] for r in json.loads((tmp_path / "claims.json").read_text())] == ["random-init ViT"] * 2
    imgs, labels, _ = kept["splits"]["test"]
    r = kept["results"]["teacher"]
    feats = probe_input(r, extract_features(teacher, imgs))
    got = segmentation_metrics(predict_seg(r["probes"][0]["seg"], feats, tuple(imgs.shape[-2:])), labels, len(CLASSES))
    assert got["mIoU"] == pytest.approx(m["probes"]["teacher"]["seg"]["per_seed"][0]["mIoU"])


@pytest.mark.kernel
def test_pinned_tiny_metrics(tiny_run):
    "Every number the data, teacher and probes stages write at `tiny` equals the pinned value (tests/pinning.py)."
    from pinning import check_pinned
    rc, base = tiny_run
    for stage in STAGES.split(","):
        check_pinned(f"reproduce_tiny/{stage}", json.loads((base / "runs" / "tiny" / stage / "metrics.json").read_text()))
