"""Smoke run of the I2P-MAE pipeline (nbs/pipelines/30_i2pmae.ipynb) through papermill at the `tiny` preset, on a tiny
dataset and a tiny teacher made here in tmp_path (CI has no /work/data): every variant pre-trains and is evaluated, the
report has a row per variant with finite numbers, the figures and caches exist, and a rerun resumes instead of retraining."""
import json, math, os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "nbs" / "pipelines" / "30_i2pmae.ipynb"
VARIANTS = ("point_mae", "i2p_random", "i2p_guided", "i2p_guided_no2d")
ROWS = ("scratch (random init)", "Point-MAE-style (random mask, 3D loss)", "I2P-MAE, random mask (3D + 2D loss)",
        "**I2P-MAE**, guided mask (3D + 2D loss)", "I2P-MAE, guided mask, no 2D loss")


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import papermill as pm
    import torch
    from condense_nb.datasets import build_preset, RoomViews
    from condense_nb.teacher import from_preset, train_teacher
    base = tmp_path_factory.mktemp("i2pmae")
    root = build_preset("tiny", root=base / "data", progress=False)
    views = RoomViews(root, "train")
    images = torch.stack([views[i]["rgb"] for i in range(len(views))])
    n = torch.get_num_threads()
    try: train_teacher(images, from_preset("tiny"), base / "teacher", progress=False)
    finally: torch.set_num_threads(n)
    out = base / "runs" / "i2pmae"; out.mkdir(parents=True)
    params = dict(preset="tiny", data_root=str(base / "data"), out_dir=str(out), teacher_path=str(base / "teacher" / "teacher.safetensors"),
                  overrides='{"seeds": [0, 1]}', threads=1)
    env_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path                                    # the kernel imports this checkout's condense_nb
    try:
        pm.execute_notebook(str(NB), str(out / "run.ipynb"), parameters=params, kernel_name="python3", cwd=str(NB.parent),
                            progress_bar=False)
        mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("latest.json")}
        first = json.loads((out / "metrics.json").read_text())
        pm.execute_notebook(str(NB), str(out / "rerun.ipynb"), parameters=params, kernel_name="python3", cwd=str(NB.parent),
                            progress_bar=False)
    finally:
        if old is None: os.environ.pop("PYTHONPATH", None)
        else: os.environ["PYTHONPATH"] = old
    return out, mtimes, first


@pytest.mark.kernel
def test_i2pmae_pipeline_writes_every_variant(tiny_run):
    out, _, _ = tiny_run
    report = (out / "report.md").read_text()
    for row in ROWS: assert f"| {row} |" in report
    assert "| I2P-MAE | 93.4 | 90.11 |" in report and "| Point-MAE | 91.0 | 85.18 |" in report   # the paper's numbers, labelled
    assert "beat" in report and "seed std" in report
    m = json.loads((out / "metrics.json").read_text())
    assert m["preset"] == "tiny" and m["seeds"] == [0, 1] and m["pretrain_per_seed"] is True
    assert m["teacher"].endswith("teacher.safetensors")
    for v in ("scratch",) + VARIANTS:
        for col, r in m["summary"][v].items():
            assert 0 <= r["mean"] <= 1 and _finite(r["std"]), (v, col, r)
        assert set(m["summary"][v]) == {"clean/max", "clean/concat", "scan/max", "scan/concat", "finetune"}
        for s in ("0", "1"):
            svm = m["svm"][v][s]["clean/max"]
            assert svm["C"] in m["svm_Cs"] and 0 <= svm["val_acc"] <= 1 and svm["n_test"] == 12
            ft = m["finetune"][v][s]
            assert 0 <= ft["best_epoch"] < m["finetune_config"]["epochs"] and 0 <= ft["test_acc"] <= 1
    for v in VARIANTS:
        assert _finite(m["pretrain"][v]["samples_per_s"]) and m["pretrain"][v]["samples_per_s"] > 0
        for s in ("0", "1"):
            r = m["pretrain"][v]["runs"][s]
            assert r["epochs"] == m["mae_config"]["epochs"] and _finite(r["loss_3d_last"]) and r["loss_3d_last"] > 0
            assert (r["loss_2d_last"] is not None) == (v in ("i2p_random", "i2p_guided"))    # a 2D head only with the 2D loss
        assert (out / v / "seed_1" / "latest.json").exists()
    assert _finite(m["pretrain_samples_per_s"]) and m["pretrain_samples_per_s"] > 0
    g = m["guidance"]
    assert g["clouds"] == 24 and g["feat_dim"] == 48 and g["temperature"] > 0
    u = g["uniformity"]["T=1 (official)"]
    assert 1 <= u["max_min_ratio"] < math.e and 0 <= u["kl_to_uniform"] < 0.01      # attention saliency: T = 1 is ~uniform
    assert g["augmentation"]["clouds"] > 0 and g["augmentation"]["misaligned"] == 0
    tc = g["temperature_choice"]                                     # chosen on val between the official T = 1 and the relative T
    assert set(tc["candidates"]) == {"T=1 (official)", f"T={tc['candidates'][[k for k in tc['candidates'] if k != 'T=1 (official)'][0]]:.3g} (relative)"}
    best = max(tc["val_acc"].values())
    assert tc["val_acc"][tc["chosen"]] == best and (tc["chosen"] == "T=1 (official)" or tc["val_acc"]["T=1 (official)"] < best)
    assert g["temperature"] == tc["candidates"][tc["chosen"]]
    inv = g["augmentation_invariance"]
    assert inv["max_abs_token_saliency_diff"] <= 0.01 * inv["token_saliency_scale"] and inv["max_abs_target_diff"] <= 0.05 * inv["target_scale"]
    for fig in ("loss.png", "saliency.png", "reconstruction.png", "results.png", "saliency.html"):
        assert (out / fig).stat().st_size > 1000, fig
    assert "plotly" in (out / "saliency.html").read_text()[:5_000_000].lower()
    assert (out / "guidance.safetensors").exists()


@pytest.mark.kernel
def test_i2pmae_pipeline_rerun_resumes(tiny_run):
    out, mtimes, first = tiny_run
    assert mtimes and {p: p.stat().st_mtime_ns for p in out.rglob("latest.json")} == mtimes   # no checkpoint rewritten
    again = json.loads((out / "metrics.json").read_text())
    assert again["summary"] == first["summary"] and again["svm"] == first["svm"]           # same numbers from the caches


@pytest.mark.kernel
def test_i2pmae_claims_ledger(tiny_run):
    """I2P-MAE's rows in runs/claims.json: one per baseline and evaluation column, paired over the 12 test shapes; each
    difference recomputed here from the per-shape hits stored in metrics.json (seeds averaged per shape first)."""
    import numpy as np
    from condense_nb.claims import ROW_KEYS, VERDICTS
    out, _, _ = tiny_run
    rows = json.loads((out.parent / "claims.json").read_text())
    cols = ("clean/max", "clean/concat", "scan/max", "scan/concat", "finetune")
    assert len(rows) == 4 * len(cols) and all(r["stage"] == "i2pmae" and tuple(r) == ROW_KEYS for r in rows)
    assert sorted({r["baseline"] for r in rows}) == ["i2p_guided_no2d", "i2p_random", "point_mae", "scratch"]
    m = json.loads((out / "metrics.json").read_text())
    def hits(v, col):
        return np.array([m["finetune"][v][s]["test_correct"] if col == "finetune" else m["svm"][v][s][col]["test_correct"]
                         for s in ("0", "1")], float)
    for r, (b, col) in zip(rows, [(b, c) for b in ("point_mae", "scratch", "i2p_random", "i2p_guided_no2d") for c in cols]):
        assert r["baseline"] == b and r["n_units"] == 12 and r["unit"] == "shape" and r["verdict"] in VERDICTS
        a, z = hits("i2p_guided", col), hits(b, col)
        assert a.shape == (2, 12) and set(np.unique(a)) <= {0.0, 1.0}
        assert math.isclose(r["diff"], float((a.mean(0) - z.mean(0)).mean()), abs_tol=1e-12)
        assert math.isclose(r["method_mean"], float(np.mean(m["summary"]["i2p_guided"][col]["mean"])), abs_tol=1e-12)   # hits = accuracy
    assert "The claims, paired over test shapes" in (out / "report.md").read_text()


@pytest.mark.kernel
def test_i2pmae_run_without_papermill(tiny_run, tmp_path):
    """`condense_nb.i2pmae.run` called directly on the same tiny data and teacher: one seed, no fine-tuning, a fixed
    temperature; the ledger gets its rows, the checkpoints load back, and a folder pre-trained at another temperature
    is refused instead of being silently continued."""
    import torch
    from condense_nb.encoders import load_encoder
    from condense_nb.i2pmae import I2PMAEConfig, run, pretrained, CLAIMS, COLUMNS
    out, _, _ = tiny_run
    base = out.parent.parent
    teacher = load_encoder(base / "teacher" / "teacher.safetensors")
    cfg = I2PMAEConfig.from_preset("tiny", seeds=(3,), pretrain_epochs=1, finetune=False, choose_temperature=False, temperature=0.05,
                                   num_threads=1)
    m = run(cfg, base / "data", tmp_path / "run", teacher, "tiny teacher", ledger=tmp_path / "claims.json")
    assert m["seeds"] == [3] and m["finetune"] is None and m["guidance"]["temperature"] == 0.05
    assert set(m["summary"]["i2p_guided"]) == {c for c, _ in COLUMNS} - {"finetune"}
    assert len(json.loads((tmp_path / "claims.json").read_text())) == len(CLAIMS) * 4 == len(m["claims"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"] == m["summary"]
    mae = pretrained(tmp_path / "run", "i2p_guided", 3)
    assert mae.cfg.seed == 3 and mae.cfg.epochs == 1 and not mae.training
    assert m["guidance"]["clouds"] == 24 and _finite(m["pretrain"]["i2p_guided"]["runs"]["3"]["loss_3d_last"])
    with pytest.raises(ValueError, match="other 2D guidance or temperature"):
        run(I2PMAEConfig.from_preset("tiny", **{**cfg.__dict__, "temperature": 0.5}), base / "data", tmp_path / "run", teacher)
    with pytest.raises(ValueError, match="pretrained|no pre-training here"):
        pretrained(tmp_path / "run", "i2p_guided", 4)


@pytest.mark.kernel
def test_pinned_metrics(tiny_run):
    "Every number pipeline 30 writes at `tiny` (two seeds) equals the pinned value (tests/pinning.py)."
    from pinning import check_pinned
    check_pinned("pipeline_i2pmae", tiny_run[2])
