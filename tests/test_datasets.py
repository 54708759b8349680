"""Tests of condense_nb.datasets: presets, fixed splits, the on-disk layout, resumable builds and the readers.

Every check compares against an independent truth: the documented seed formulas, a fresh render of the stored
scene description from the stored cameras, render-call counts during a resumed build, and byte comparison with
an uninterrupted build. Micro configs (smaller than `tiny`) keep the file well under a minute.
"""
import dataclasses, json, math, shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from condense_nb import datasets as D
from condense_nb.cameras import intrinsics, inroom_path, camera_center
from condense_nb.scenes import CLASSES, render, sample_points, scene_from_dict
from condense_nb.rooms import make_room

MICRO = D.get_preset("tiny", name="micro", rooms_train=2, rooms_val=1, rooms_test=2, views_per_room=2, width=32, height=24,
                     points_per_room=512, dup_rooms=1, dups_per_room=1, shapes_train=0, shapes_val=0, shapes_test=0)
N_ROOMS = 2 + 1 + 2 + 1


def _has_shapes():
    try:
        import condense_nb.shapes  # noqa: F401
        return True
    except ImportError:
        return False


def _files(root: Path) -> dict:
    "Every data file of a dataset (build.json holds timings and is the one file allowed to differ)."
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "build.json"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return D.build_preset(MICRO, root=root, progress=False)


# ---------------------------------------------------------------- presets and errors

def test_presets_and_unknown_names():
    assert set(D.PRESETS) == {"tiny", "small", "full"}
    tiny, small, full = (D.get_preset(n) for n in ("tiny", "small", "full"))
    # the scales grow from tiny to full in every dimension
    for f in ("rooms_train", "rooms_val", "rooms_test", "views_per_room", "width", "points_per_room", "shapes_train"):
        assert getattr(tiny, f) < getattr(small, f) <= getattr(full, f), f
    assert full.width == 224
    assert D.get_preset("tiny", width=80).width == 80 and D.get_preset("tiny").width == tiny.width  # no mutation
    with pytest.raises(ValueError, match="preset: unknown value 'medium'"):
        D.get_preset("medium")
    with pytest.raises(ValueError, match="unknown value 'medium'"):
        D.build_preset("medium", root="/nonexistent/never-written")
    with pytest.raises(ValueError, match=r"no field\(s\) \['pixels'\]"):
        D.get_preset("tiny", pixels=3)
    with pytest.raises(ValueError, match="dup_rooms"):
        D.get_preset("tiny", rooms_test=1, dup_rooms=2)
    with pytest.raises(ValueError, match="rooms_train"):
        D.get_preset("tiny", rooms_train=0)


# ---------------------------------------------------------------- splits

@pytest.mark.parametrize("preset", ["tiny", "small", "full"])
def test_splits_disjoint_and_documented(preset):
    cfg = D.get_preset(preset, base_seed=7)
    plan = D.room_plan(cfg)
    assert plan == D.room_plan(D.get_preset(preset, base_seed=7))                  # deterministic
    seeds = {s: D.split_seeds(cfg, s) for s in D.SPLITS}
    # the documented formula: base_seed + offset(split) + i
    for s, off in (("train", 0), ("val", 100_000), ("test", 200_000)):
        assert seeds[s] == [7 + off + i for i in range(getattr(cfg, f"rooms_{s}"))]
    assert not set(seeds["train"]) & set(seeds["val"])
    assert not set(seeds["train"]) & set(seeds["test"])
    assert not set(seeds["val"]) & set(seeds["test"])
    ids = [r["scene_id"] for r in plan]
    assert len(ids) == len(set(ids))
    dups = [r for r in plan if r["split"] == "test_dup"]
    assert len(dups) == cfg.dup_rooms * cfg.dups_per_room
    test_ids = {r["scene_id"]: r["seed"] for r in plan if r["split"] == "test"}
    for r in dups:
        assert test_ids[r["duplicate_of"]] == r["seed"]                            # layout of its original
    assert len({r["duplicate_of"] for r in dups}) == cfg.dup_rooms
    cams = [r["camera_seed"] for r in plan]
    assert len(cams) == len(set(cams))                                             # new cameras for every capture


def test_splits_are_different_rooms():
    a, b = (make_room(s) for s in D.split_seeds(MICRO, "train"))
    c = make_room(D.split_seeds(MICRO, "val")[0])
    sig = lambda sc: (sc.meta["size"], [o["cls"] for o in sc.meta["objects"]])
    assert len({json.dumps(sig(x)) for x in (a, b, c)}) == 3


# ---------------------------------------------------------------- layout and round trip

def test_layout(built):
    assert (built / "DONE").exists() and (built / "config.json").exists() and (built / "build.json").exists()
    assert json.loads((built / "config.json").read_text())["config"] == dataclasses.asdict(MICRO)
    for r in D.room_plan(MICRO):
        f = built / "rooms" / r["split"] / r["scene_id"]
        assert sorted(p.name for p in f.iterdir()) == ["DONE", "points.safetensors", "scene.json", "views.safetensors"]
    from safetensors.torch import load_file
    v = load_file(built / "rooms/train/train_0000/views.safetensors")
    V, H, W = MICRO.views_per_room, MICRO.height, MICRO.width
    expect = dict(rgb=((V, H, W, 3), torch.uint8), depth=((V, H, W), torch.float32), semantic=((V, H, W), torch.int16),
                  instance=((V, H, W), torch.int16), normal=((V, H, W, 3), torch.float16), K=((V, 3, 3), torch.float32),
                  viewmats=((V, 4, 4), torch.float32))
    assert {k: (tuple(t.shape), t.dtype) for k, t in v.items()} == expect
    assert torch.equal(torch.isinf(v["depth"]), v["semantic"] < 0)


def test_views_roundtrip_equals_fresh_render(built):
    ds = D.RoomViews(built, "train")
    assert len(ds) == MICRO.rooms_train * MICRO.views_per_room
    K_expected = intrinsics(MICRO.fov, MICRO.width, MICRO.height)
    for i in range(len(ds)):
        x = ds[i]
        rec = json.loads((built / "rooms/train" / x["scene_id"] / "scene.json").read_text())
        scene = scene_from_dict(rec)
        # cameras are the documented ones: intrinsics from the fov, an in-room path seeded by camera_seed
        torch.testing.assert_close(x["K"], K_expected)
        torch.testing.assert_close(x["viewmat"], inroom_path(scene.meta["size"], MICRO.views_per_room, seed=rec["camera_seed"])[x["view_index"]])
        ref = render(scene, x["K"], x["viewmat"], MICRO.width, MICRO.height)
        assert x["rgb"].shape == (3, MICRO.height, MICRO.width) and x["rgb"].dtype == torch.float32
        assert torch.equal((x["rgb"] * 255).round().to(torch.uint8), (ref["rgb"] * 255).round().clamp(0, 255).to(torch.uint8).permute(2, 0, 1))
        assert torch.equal(x["depth"], ref["depth"])
        assert torch.equal(x["semantic"], ref["semantic"].long()) and torch.equal(x["instance"], ref["instance"].long())
        torch.testing.assert_close(x["normal"], ref["normal"].permute(2, 0, 1), atol=1e-3, rtol=0)
        assert torch.isinf(x["depth"]).sum() == (x["semantic"] < 0).sum()


def test_scenes_roundtrip_points_and_caption(built):
    ds = D.RoomScenes(built, "val")
    assert len(ds) == MICRO.rooms_val
    s = ds[0]
    rec = s["scene"]
    scene = scene_from_dict(rec)
    assert rec["seed"] == 100_000 and rec["split"] == "val" and s["scene_id"] == "val_0000"
    ref = sample_points(scene, MICRO.points_per_room, seed=rec["points_seed"])
    torch.testing.assert_close(s["points"], ref["points"])
    assert torch.equal(s["point_semantic"], ref["semantic"].long())
    # the stored scene is the room its seed makes
    fresh = make_room(rec["seed"])
    assert [o["cls"] for o in fresh.meta["objects"]] == [o["cls"] for o in rec["meta"]["objects"]]
    assert all(o["cls"] in s["caption"] for o in rec["meta"]["objects"])
    # RoomScenes and RoomViews agree on every view
    views = D.RoomViews(built, "val")
    for v in range(MICRO.views_per_room):
        x = views[v]
        for k_scene, k_view in (("rgb", "rgb"), ("depth", "depth"), ("semantic", "semantic"), ("viewmats", "viewmat")):
            assert torch.equal(s[k_scene][v], x[k_view])
    # points lie where the renders say: unproject a view's depth; every pixel's point is near some surface sample
    from condense_nb.cameras import unproject
    P = unproject(s["depth"][0], s["K"][0], s["viewmats"][0])
    P = P[torch.isfinite(s["depth"][0])].reshape(-1, 3)
    dense = sample_points(scene, 20000, seed=1)["points"]
    assert torch.cdist(P, dense).min(1).values.median() < 0.1


def test_near_duplicate_points_to_its_original(built):
    dups = D.RoomScenes(built, "test_dup")
    assert len(dups) == MICRO.dup_rooms * MICRO.dups_per_room
    tests = D.RoomScenes(built, "test")
    d = dups[0]
    orig = tests[tests.scene_ids.index(d["duplicate_of"])]
    assert d["scene"]["split"] == "test_dup" and d["duplicate_of"].startswith("test_")
    assert d["scene"]["seed"] == orig["scene"]["seed"]
    # same layout (at most one object moved), other light, other cameras
    po = {o["instance_id"]: o["position"] for o in orig["scene"]["meta"]["objects"]}
    pd = {o["instance_id"]: o["position"] for o in d["scene"]["meta"]["objects"]}
    assert po.keys() == pd.keys()
    assert sum(not np.allclose(po[k], pd[k]) for k in po) <= 1
    assert d["scene"]["light_dir"] != orig["scene"]["light_dir"]
    c_o = torch.stack([camera_center(v) for v in orig["viewmats"]])
    c_d = torch.stack([camera_center(v) for v in d["viewmats"]])
    assert torch.cdist(c_o, c_d).min() > 1e-3
    assert not torch.equal(d["rgb"], orig["rgb"])


# ---------------------------------------------------------------- resume, overwrite, mismatch

def _counting_render(monkeypatch, fail_after=None):
    calls = {"n": 0}
    real = render                                   # the original renderer (not an earlier wrapper)

    def counted(*a, **kw):
        if fail_after is not None and calls["n"] >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real(*a, **kw)
    monkeypatch.setattr(D, "render", counted)
    return calls


def test_interrupted_build_resumes_identically(built, tmp_path, monkeypatch):
    V, k = MICRO.views_per_room, 3
    # interrupt in the middle of room k+1 (after it rendered one view)
    calls = _counting_render(monkeypatch, fail_after=k * V + 1)
    with pytest.raises(KeyboardInterrupt):
        D.build_preset(MICRO, root=tmp_path, progress=False)
    out = tmp_path / MICRO.name
    done = sorted(p.parent.name for p in out.glob("rooms/*/*/DONE"))
    assert len(done) == k and not (out / "DONE").exists()
    with pytest.raises(ValueError, match="incomplete"):
        D.RoomViews(out, "train")
    # resume: only the unfinished rooms are rendered
    calls = _counting_render(monkeypatch)
    D.build_preset(MICRO, root=tmp_path, progress=False)
    assert calls["n"] == (N_ROOMS - k) * V
    assert json.loads((out / "build.json").read_text())["items_reused"] == k
    assert _files(out) == _files(built)                                            # byte-identical to one go
    # a finished dataset is reused without rendering
    calls = _counting_render(monkeypatch)
    D.build_preset(MICRO, root=tmp_path, progress=False)
    assert calls["n"] == 0
    # overwrite=True rebuilds everything, to the same bytes
    calls = _counting_render(monkeypatch)
    D.build_preset(MICRO, root=tmp_path, progress=False, overwrite=True)
    assert calls["n"] == N_ROOMS * V
    assert _files(out) == _files(built)


def test_config_mismatch_and_foreign_folder(built, tmp_path):
    other = dataclasses.replace(MICRO, width=40)
    with pytest.raises(ValueError, match=r"differs in \['width'\].*overwrite=True"):
        D.build_preset(other, root=built.parent, progress=False)
    (tmp_path / "micro").mkdir(); (tmp_path / "micro" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no config.json"):
        D.build_preset(MICRO, root=tmp_path, progress=False)
    assert (tmp_path / "micro" / "notes.txt").read_text() == "mine"               # left alone
    with pytest.raises(ValueError, match="preset: expected a preset name"):
        D.build_preset(42, root=tmp_path)


# ---------------------------------------------------------------- missing and corrupt files

def test_missing_and_corrupt_files(built, tmp_path):
    with pytest.raises(ValueError, match="dataset folder not found"):
        D.RoomViews(tmp_path / "nothing", "train")
    with pytest.raises(ValueError, match="split: unknown value 'dev'"):
        D.RoomViews(built, "dev")
    bad = tmp_path / "micro"
    shutil.copytree(built, bad)
    views = bad / "rooms/train/train_0001/views.safetensors"
    views.unlink()
    with pytest.raises(ValueError, match=str(views).replace("\\", "\\\\")):
        D.RoomViews(bad, "train")
    views.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="train_0001/views.safetensors: unreadable"):
        D.RoomViews(bad, "train")
    with pytest.raises(ValueError, match="train_0001/views.safetensors: unreadable"):
        D.RoomScenes(bad, "train")[1]
    shutil.rmtree(bad / "rooms/val/val_0000")
    with pytest.raises(ValueError, match="val_0000: scene folder not found"):
        D.RoomScenes(bad, "val")
    (bad / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json: malformed JSON"):
        D.dataset_stats(bad)
    with pytest.raises(ValueError, match="shapes/clean_train.safetensors: file not found"):
        D.ShapeSet(built, "train")


# ---------------------------------------------------------------- statistics

def test_dataset_stats_counts(built):
    st = D.dataset_stats(built)
    for split, n in (("train", 2), ("val", 1), ("test", 2), ("test_dup", 1)):
        assert st["rooms"][split]["scenes"] == n
        assert st["rooms"][split]["views"] == n * MICRO.views_per_room
        assert st["rooms"][split]["points"] == n * MICRO.points_per_room
    # brute-force class frequencies over the train views
    ds = D.RoomViews(built, "train")
    sem = torch.stack([ds[i]["semantic"] for i in range(len(ds))])
    freq = st["class_pixel_freq"]["train"]
    assert math.isclose(sum(freq.values()), 1.0, rel_tol=1e-9)
    for c, name in enumerate(CLASSES):
        assert math.isclose(freq[name], (sem == c).sum().item() / sem.numel(), abs_tol=1e-9)
    assert math.isclose(freq["miss"], (sem == -1).sum().item() / sem.numel(), abs_tol=1e-9)
    assert st["near_duplicates"] == {r["scene_id"]: r["duplicate_of"] for r in D.room_plan(MICRO) if r["split"] == "test_dup"}
    assert st["build"]["seconds"] > 0
    assert st["disk_bytes"] == sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    leftover = built / "rooms" / "train" / ".views.safetensors.ab12.tmp"         # an interrupted write's temp file
    try:
        leftover.write_bytes(b"x" * 4096)
        assert D.dataset_stats(built)["disk_bytes"] == st["disk_bytes"]            # not part of the dataset's size
    finally: leftover.unlink()


# ---------------------------------------------------------------- shapes

@pytest.mark.skipif(not _has_shapes(), reason="condense_nb.shapes not exported yet")
def test_shape_sets(tmp_path):
    from condense_nb.shapes import SHAPE_CLASSES, make_shape_set
    cfg = dataclasses.replace(MICRO, name="shp", rooms_train=1, rooms_val=1, rooms_test=1, dup_rooms=0, views_per_room=1,
                              shapes_train=1, shapes_val=0, shapes_test=1, points_per_shape=128)
    root = D.build_preset(cfg, root=tmp_path, progress=False)
    # shapes_val=0: no val sets
    assert sorted(p.name for p in (root / "shapes").iterdir()) == sorted(
        f"{v}_{s}.safetensors" for v in ("clean", "scan") for s in ("train", "test"))
    n_cls = len(SHAPE_CLASSES)
    ref = make_shape_set("train", 1, 128, variant="scan", base_seed=cfg.base_seed)
    ds = D.ShapeSet(root, "train", "scan")
    assert len(ds) == n_cls and ds.class_names == list(SHAPE_CLASSES)
    assert torch.equal(ds.points, torch.as_tensor(ref["points"]).float())
    assert torch.equal(ds.mask, torch.as_tensor(ref["mask"]).bool())
    assert torch.bincount(ds.labels, minlength=n_cls).tolist() == [1] * n_cls
    # train and test objects are different shapes (disjoint seeds)
    te = D.ShapeSet(root, "test", "clean")
    assert not set(te.item_seeds.tolist()) & set(D.ShapeSet(root, "train", "clean").item_seeds.tolist())
    p, y = ds[3]
    assert p.shape == (128, 3) and int(y) == int(ref["labels"][3])
    sub = D.ShapeSet(root, "test", "clean", n_points=64)
    a, b = sub[0][0], sub[0][0]
    assert a.shape == (64, 3) and torch.equal(a, b)                                 # fixed subset without augment
    full = D.ShapeSet(root, "test", "clean").points[0]
    assert (a[:, None, :] == full[None]).all(-1).any(1).all()                       # a subset of the stored points
    aug = D.ShapeSet(root, "test", "clean", augment=True, seed=1)
    c, d = aug[0][0], aug[0][0]
    assert not torch.equal(c, d)                                                    # fresh augmentation each call
    with pytest.raises(ValueError, match="n_points"):
        D.ShapeSet(root, "test", "clean", n_points=1000)
    with pytest.raises(ValueError, match="clean_val.safetensors: file not found"):
        D.ShapeSet(root, "val", "clean")
    with pytest.raises(ValueError, match="variant: unknown value 'noisy'"):
        D.ShapeSet(root, "test", "noisy")
    st = D.dataset_stats(root)
    assert st["shapes"]["clean_train"]["per_class"] == {c: 1 for c in SHAPE_CLASSES}
    assert 0 < st["shapes"]["scan_test"]["object_fraction"] < 1
