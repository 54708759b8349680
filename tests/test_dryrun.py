"""`condense-nb reproduce --preset full --dry-run`: every stage's own step at the `full` model shapes, on a dataset built
at the `full` resolution, on the CPU — the proof that the full shapes hold before a GPU is at hand (issue 17)."""
import json

import pytest
import torch

from condense_nb import cli
from condense_nb.datasets import RoomViews, ShapeSet, get_preset
from condense_nb.encoders import DenseEncoder
from condense_nb import teacher as T, mae, condense, fit3d, i2pmae
from condense_nb.pool import PoolConfig
from condense_nb.shapes import SHAPE_CLASSES


@pytest.mark.timeout(900)                 # about 90 s on one idle core
def test_full_dry_run(tmp_path, capsys):
    runs, data = tmp_path / "runs", tmp_path / "data"
    assert cli.main(["reproduce", "--preset", "full", "--dry-run", "--root", str(data), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| stage | step | parameters |" in out and "H100-hours" in out
    res = json.loads((runs / "full" / "dryrun" / "dryrun.json").read_text())
    assert (runs / "full" / "dryrun" / "dryrun.md").read_text().count("\n| ") >= 10
    rows = {r["stage"] + ":" + r["part"].split(" ")[0]: r for r in res["rows"]}
    # the dataset the stages read is at the full resolution and point counts
    full = get_preset("full")
    x = RoomViews(data / "full_dryrun", "train")[0]
    assert tuple(x["rgb"].shape) == (3, full.height, full.width)
    assert ShapeSet(data / "full_dryrun", "train", "clean").points.shape[1] == full.points_per_shape
    # each stage ran at its full config; the full runs' step counts restated from what each experiment's run() does
    tcfg, ccfg, mcfg = T.from_preset("full"), condense.CondenseConfig.from_preset("full"), mae.from_preset("full")
    icfg, f3 = i2pmae.I2PMAEConfig.from_preset("full"), fit3d.Fit3DConfig.from_preset("full")
    enc = DenseEncoder(tcfg.arch, img_size=tcfg.global_size, **tcfg.timm_kwargs())
    n_enc = sum(p.numel() for p in enc.parameters())
    assert rows["probes:teacher"]["params"] == n_enc
    t = rows["teacher:DINO"]
    assert (t["full_batch"], t["full_steps"]) == (tcfg.batch_size, tcfg.steps) and t["params"] > n_enc   # + the DINO head
    c = rows["condense:joint"]
    assert c["batch"] == c["full_batch"] == ccfg.views_per_step                       # measured on a whole step's views
    sweep = ccfg.sweep_steps * len(ccfg.lam_fids)                                     # every candidate weight, sweep_steps each
    assert c["full_steps"] == sweep + (ccfg.steps - ccfg.sweep_steps) + ccfg.steps    # + the chosen run's rest + the oracle run
    clean_train = full.shapes_train * len(SHAPE_CLASSES)
    p = rows["i2pmae:pre-training"]
    assert p["full_batch"] == mcfg.batch_size and f"{full.points_per_shape} points" in p["part"]
    assert p["full_steps"] == (4 * len(icfg.seeds) + 2) * icfg.pretrain_epochs * (clean_train // mcfg.batch_size)
    assert rows["i2pmae:2D"]["full_steps"] == clean_train
    lift, ft = rows["fit3d:lifting"], rows["fit3d:fine-tuning"]
    assert lift["full_steps"] == f3.lift_config().iterations * full.rooms_train
    epochs = len(f3.finetune_lrs) + 1 if len(f3.finetune_lrs) > 1 else 2              # 1 per rate searched, + the chosen rate's 2nd
    assert ft["full_steps"] == epochs * -(-full.rooms_train * full.views_per_room // f3.finetune_config().batch_size)
    assert rows["pool:render"]["full_steps"] == PoolConfig.from_preset("full").rooms * PoolConfig.from_preset("full").views_per_room
    # FLOPs: a ViT forward is at least 2 · (its linear-layer parameters) · tokens; the probe row is one 224² view
    tokens = (full.height // tcfg.patch_size) * (full.width // tcfg.patch_size)
    n_linear = sum(m.weight.numel() for m in enc.modules() if isinstance(m, torch.nn.Linear))
    assert 2 * n_linear * tokens <= rows["probes:teacher"]["flops_per_step"] <= 2 * n_enc * (tokens + 1) * 1.5
    # a DINO step per image is at least the student's forward and backward (3×) on its two global crops, and the teacher's forward
    assert t["flops_per_step"] / t["batch"] >= (2 * 3 + 2) * 2 * n_linear * tokens
    assert all(r["flops_per_step"] > 0 for r in res["rows"] if r["h100_hours"] is not None)
    assert all(r["h100_hours"] is None for r in res["rows"] if r["stage"] in ("data", "pool"))


def test_dry_run_takes_no_stage_options(tmp_path, capsys):
    for extra in (["--only", "teacher"], ["--force"], ["--set", "teacher.shipped=true"]):
        assert cli.main(["reproduce", "--preset", "tiny", "--dry-run", "--root", str(tmp_path), "--runs", str(tmp_path)] + extra) == 2
        assert "--dry-run runs every stage once: it takes no --only, --force or --set" in capsys.readouterr().err
