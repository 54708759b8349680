"""`probe_stage.choose_snapshot`: a teacher run's snapshots chosen on val — the val argmax wins, test rooms are never read, scores are kept."""
import json
import torch
import safetensors.torch as st
from condense_nb import probe_stage
from condense_nb.probe_stage import ProbeStageConfig, choose_snapshot, val_scores, room_views
from condense_nb.encoders import DenseEncoder, save_encoder, load_encoder
from condense_nb.datasets import build_preset
from condense_nb.teacher import from_preset, snapshot_path
from condense_nb.core import seed_everything


def _snapshot(run_dir, step, blind=False):
    "A snapshot file as `teacher.save_snapshot` writes it: a random-init tiny ViT, or (blind) the same with its patch embedding zeroed: features of position only."
    tcfg = from_preset("tiny"); seed_everything(step)
    enc = DenseEncoder(tcfg.arch, img_size=tcfg.global_size, **tcfg.timm_kwargs())
    if blind:
        with torch.no_grad():
            for p in enc.model.patch_embed.parameters(): p.zero_()
    return save_encoder(enc, snapshot_path(run_dir / "ckpt", step), dict(steps=9, step=step))


def test_choose_snapshot_takes_the_val_best_reads_no_test_room_and_scores_once(tmp_path, monkeypatch):
    run_dir, cfg = tmp_path / "teacher", ProbeStageConfig.from_preset("tiny", epochs=2)
    _snapshot(run_dir, 3); _snapshot(run_dir, 6, blind=True)         # 6 does not see the image: its probe can learn the layout prior only
    build_preset("tiny", root=tmp_path / "data", progress=False)
    splits_read, calls = [], []
    real_views, real_score = probe_stage.RoomViews, probe_stage.val_scores
    monkeypatch.setattr(probe_stage, "RoomViews", lambda root, split: splits_read.append(split) or real_views(root, split))
    monkeypatch.setattr(probe_stage, "val_scores", lambda *a: calls.append(1) or real_score(*a))
    sel = choose_snapshot(run_dir, tmp_path / "data", "tiny", cfg, progress=False)
    assert "test" not in splits_read and set(splits_read) == {"train", "val"}
    # each score is the plain probe on val, recomputed here candidate by candidate; the choice is their argmax
    root = tmp_path / "data" / "tiny"
    (tr_x, tr_y, _, _), (va_x, va_y, _, va_room) = (room_views(root, s, cfg.view_stride) for s in ("train", "val"))
    for step in (3, 6):
        got = real_score(load_encoder(snapshot_path(run_dir / "ckpt", step)), (tr_x, tr_y), (va_x, va_y, va_room), cfg)
        assert abs(got["val_mIoU"] - sel["scores"][step]) < 1e-6
        assert abs(got["purity"]["purity"] - sel["diagnostics"][step]["purity"]["purity"]) < 1e-9     # the val diagnostics beside it
        assert abs(got["rooms"]["top1"] - sel["diagnostics"][step]["rooms"]["top1"]) < 1e-9
    assert sel["scores"][3] != sel["scores"][6] and sel["step"] == max((3, 6), key=sel["scores"].get) and sel["steps"] == 9
    # (on tiny rooms the image-blind snapshot wins: the layout prior beats a random-init tiny ViT's features)
    # the run's teacher is now the chosen snapshot, and its JSON says so
    best = sel["step"]
    assert (run_dir / "teacher.safetensors").read_bytes() == snapshot_path(run_dir / "ckpt", best).read_bytes()
    meta = json.loads((run_dir / "teacher.json").read_text())["meta"]["selected_on_val"]
    assert meta["step"] == best and set(meta["scores"]) == {"3", "6"}
    # kept scores: a second call probes nothing; a new snapshot is the only one probed
    n = len(calls)
    assert choose_snapshot(run_dir, tmp_path / "data", "tiny", cfg, progress=False) == sel and len(calls) == n
    _snapshot(run_dir, 9, blind=True)
    again = choose_snapshot(run_dir, tmp_path / "data", "tiny", cfg, progress=False)
    assert len(calls) == n + 1 and sorted(again["scores"]) == [3, 6, 9] and again["step"] == max(again["scores"], key=again["scores"].get)
    # another protocol invalidates the kept scores
    choose_snapshot(run_dir, tmp_path / "data", "tiny", ProbeStageConfig.from_preset("tiny", epochs=3), progress=False)
    assert len(calls) == n + 4


def test_choose_snapshot_without_snapshots_says_how_to_get_them(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="no snapshots; train with keep_every"):
        choose_snapshot(tmp_path, tmp_path / "data", "tiny")
