"""Bad data on disk gets one clear ValueError naming the file (and tensor or key), never a silent wrong answer or a raw
traceback: the dataset, shape-set and pool readers check dtype, shape, range and finiteness of every tensor and the
sha256 recorded at build time; the real-data loaders check values after their casts; two builds are byte-identical.

Each test writes a small bad file into tmp_path (a copy of one micro dataset built once per module, under a second)."""
import hashlib, json, shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from condense_nb import datasets as D
from condense_nb.core import st_bytes
from condense_nb.pool import PoolConfig, PoolImages, build_pool, shard_paths
from condense_nb.realdata import (load_transforms, NerfstudioScene, read_depth, load_modelnet40_h5, load_scanobjectnn_h5,
                                  normalize_unit_sphere)
from condense_nb import shapes

MICRO = D.get_preset("tiny", name="bad", rooms_train=1, rooms_val=1, rooms_test=1, views_per_room=2, width=24, height=16,
                     points_per_room=256, dup_rooms=0, shapes_train=1, shapes_val=0, shapes_test=0, points_per_shape=64)
V, H, W, P = 2, 16, 24, 256
LATIN1 = '{"name": "caf\xe9"}'.encode("latin-1")          # valid JSON text, but not UTF-8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return D.build_preset(MICRO, root=tmp_path_factory.mktemp("data"), progress=False)


def _copy(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "bad"))


def _sha(b: bytes) -> str: return hashlib.sha256(b).hexdigest()


def _rewrite(path: Path, **changes) -> None:
    "Rewrite a safetensors file with some tensors replaced, and record its new sha256 where the builder does (as a buggy builder would)."
    t = load_file(path)
    with safe_open(str(path), framework="pt") as f: meta = f.metadata()
    t.update(changes)
    data = st_bytes(t, meta)
    path.write_bytes(data)
    done, key = (path.parent.parent / "DONE", f"shapes/{path.name}") if path.parent.name == "shapes" else (path.parent / "DONE", path.name)
    rec = json.loads(done.read_text()); rec["sha256"][key] = _sha(data); done.write_text(json.dumps(rec))


def _flip_data_byte(path: Path, offset_from_end: int = 7) -> None:
    "Flip one bit in the data region of a safetensors file (the header stays valid)."
    b = bytearray(path.read_bytes()); b[-offset_from_end] ^= 0x04; path.write_bytes(bytes(b))


ROOM = "rooms/train/train_0000"


# ---------------------------------------------------------------- rooms: views

def test_nan_depth(built, tmp_path):
    root = _copy(built, tmp_path); f = root / ROOM / "views.safetensors"
    d = load_file(f)["depth"]; d[1, 3, 4] = float("nan"); _rewrite(f, depth=d)
    with pytest.raises(ValueError, match=r"train_0000/views.safetensors: tensor 'depth': contains NaN"):
        D.RoomViews(root, "train")[0]
    with pytest.raises(ValueError, match=r"train_0000/views.safetensors: tensor 'depth': contains NaN"):
        D.RoomScenes(root, "train")[0]


def test_rgb_stored_as_float(built, tmp_path):
    root = _copy(built, tmp_path); f = root / ROOM / "views.safetensors"
    _rewrite(f, rgb=load_file(f)["rgb"].float() / 255 * 10)               # range [0, 10]: would train on nonsense
    with pytest.raises(ValueError, match=r"views.safetensors: tensor 'rgb': expected dtype uint8, got float32"):
        D.RoomViews(root, "train")[1]


def test_rgb_of_the_wrong_rank(built, tmp_path):
    root = _copy(built, tmp_path); f = root / ROOM / "views.safetensors"
    _rewrite(f, rgb=load_file(f)["rgb"][..., 0].contiguous())            # [V, H, W]: permute would raise a RuntimeError
    with pytest.raises(ValueError, match=rf"views.safetensors: tensor 'rgb': expected shape \[{V}, {H}, {W}, 3\], got \[{V}, {H}, {W}\]"):
        D.RoomViews(root, "train")[0]


def test_view_semantic_outside_the_class_list(built, tmp_path):
    root = _copy(built, tmp_path); f = root / ROOM / "views.safetensors"
    s = load_file(f)["semantic"]; s[0, 0, 0] = 99; _rewrite(f, semantic=s)
    with pytest.raises(ValueError, match=r"tensor 'semantic': expected values in \[-1, \d+\], got values from -?\d+ to 99"):
        D.RoomScenes(root, "train")[0]


# ---------------------------------------------------------------- rooms: points

@pytest.mark.parametrize("key, bad, message", [
    ("points", lambda t: t.index_fill(0, torch.tensor([5]), float("nan")), r"tensor 'points': contains NaN"),
    ("points", lambda t: t[:, :2].contiguous(), rf"tensor 'points': expected shape \[{P}, 3\], got \[{P}, 2\]"),
    ("colors", lambda t: t * 10, r"tensor 'colors': expected values in \[0, 1\]"),
    ("semantic", lambda t: t[:-3].contiguous(), rf"tensor 'semantic': expected shape \[{P}\], got \[{P - 3}\]"),
    ("instance", lambda t: t.float(), r"tensor 'instance': expected dtype int16, got float32"),
])
def test_bad_room_points(built, tmp_path, key, bad, message):
    root = _copy(built, tmp_path); f = root / ROOM / "points.safetensors"
    _rewrite(f, **{key: bad(load_file(f)[key])})
    with pytest.raises(ValueError, match="train_0000/points.safetensors: " + message):
        D.RoomScenes(root, "train")[0]
    assert D.RoomViews(root, "train")[0]["rgb"].shape == (3, H, W)         # the views of that room are fine


# ---------------------------------------------------------------- shape sets

def test_nan_shape_points(built, tmp_path):
    root = _copy(built, tmp_path); f = root / "shapes/clean_train.safetensors"
    p = load_file(f)["points"]; p[3, 7, 1] = float("nan"); _rewrite(f, points=p)
    with pytest.raises(ValueError, match=r"clean_train.safetensors: tensor 'points': contains NaN"):
        D.ShapeSet(root, "train", "clean")


def test_shape_points_of_the_wrong_shape(built, tmp_path):
    root = _copy(built, tmp_path); f = root / "shapes/clean_train.safetensors"
    _rewrite(f, points=load_file(f)["points"][..., :2].contiguous())              # [M, N, 2]: no z
    with pytest.raises(ValueError, match=r"clean_train.safetensors: tensor 'points': expected shape \[\d+, \d+, 3\]"):
        D.ShapeSet(root, "train", "clean")


def test_shape_labels_outside_the_class_list(built, tmp_path):
    root = _copy(built, tmp_path); f = root / "shapes/scan_train.safetensors"
    n = len(shapes.SHAPE_CLASSES)
    y = load_file(f)["labels"]; y[0] = n; _rewrite(f, labels=y)
    with pytest.raises(ValueError, match=rf"scan_train.safetensors: tensor 'labels': expected values in \[0, {n - 1}\], got values from \d+ to {n}"):
        D.ShapeSet(root, "train", "scan")


def test_shape_set_without_class_list(built, tmp_path):
    root = _copy(built, tmp_path); f = root / "shapes/clean_train.safetensors"
    f.write_bytes(st_bytes(load_file(f), {"variant": "clean"})); (root / "DONE").write_bytes(b"")
    with pytest.raises(ValueError, match="clean_train.safetensors: metadata holds no class list"):
        D.ShapeSet(root, "train", "clean")


def test_shape_set_written_before_the_single_metadata_key_still_loads(built, tmp_path):
    root = _copy(built, tmp_path); f = root / "shapes/clean_train.safetensors"
    old = dict(variant="clean", split="train", classes=json.dumps(list(shapes.SHAPE_CLASSES)))   # the former three keys
    f.write_bytes(st_bytes(load_file(f), old)); (root / "DONE").write_bytes(b"")             # and no checksums yet
    ds = D.ShapeSet(root, "train", "clean")
    assert ds.class_names == list(shapes.SHAPE_CLASSES) and torch.equal(ds.points, D.ShapeSet(built, "train", "clean").points)


# ---------------------------------------------------------------- checksums

def test_bit_flip_in_views_is_named(built, tmp_path):
    root = _copy(built, tmp_path); f = root / ROOM / "views.safetensors"
    _flip_data_byte(f)                                                      # in viewmats: a valid float, a wrong camera
    ds = D.RoomViews(root, "train")                                         # the header still reads
    with pytest.raises(ValueError, match=r"train_0000/views.safetensors: sha256 .* recorded at build time \(the file is damaged\); "
                                         r"delete .*train_0000 and .*DONE, then run build_preset again"):
        ds[0]


def test_bit_flip_in_points_shapes_and_scene_json_is_named(built, tmp_path):
    root = _copy(built, tmp_path)
    _flip_data_byte(root / ROOM / "points.safetensors")
    with pytest.raises(ValueError, match="points.safetensors: sha256"):
        D.RoomScenes(root, "train")[0]
    _flip_data_byte(root / "shapes/scan_train.safetensors")
    with pytest.raises(ValueError, match="scan_train.safetensors: sha256"):
        D.ShapeSet(root, "train", "scan")
    sj = root / "rooms/val/val_0000/scene.json"
    sj.write_text(sj.read_text().replace('"seed": 100000', '"seed": 100001'))
    with pytest.raises(ValueError, match="val_0000/scene.json: sha256"):
        D.RoomScenes(root, "val").record(0)


def test_dataset_without_checksums_still_loads_and_is_still_value_checked(built, tmp_path):
    root = _copy(built, tmp_path)
    for done in root.rglob("DONE"): done.write_bytes(b"")                  # as written before checksums were recorded
    f = root / ROOM / "views.safetensors"
    _flip_data_byte(f)                                                      # nothing recorded: not detectable by hash ...
    assert D.RoomScenes(root, "train")[0]["rgb"].shape == (V, 3, H, W)
    assert len(D.ShapeSet(root, "train", "scan")) == len(shapes.SHAPE_CLASSES)
    d = load_file(f)["depth"]; d[0, 0, 0] = float("nan")
    f.write_bytes(st_bytes({**load_file(f), "depth": d}, {"scene_id": "train_0000"}))
    with pytest.raises(ValueError, match="tensor 'depth': contains NaN"):  # ... but the values still are
        D.RoomViews(root, "train")[0]


def test_each_file_is_verified_once_per_process(built, tmp_path, monkeypatch):
    root = _copy(built, tmp_path)
    calls = []
    real = D.verify_sha256
    monkeypatch.setattr(D, "verify_sha256", lambda path, *a, **k: (calls.append(Path(path).name), real(path, *a, **k))[1])
    views, scenes = D.RoomViews(root, "train"), D.RoomScenes(root, "train")
    for _ in range(3):
        for i in range(len(views)): views[i]
        scenes[0]
    D.RoomViews(root, "train")[0]                                           # a new reader: still remembered
    assert sorted(c for c in calls if c.endswith(".safetensors")) == ["points.safetensors", "views.safetensors"]


# ---------------------------------------------------------------- the pool

POOL = PoolConfig(name="p", rooms=2, views_per_room=1, width=16, height=12, rooms_per_shard=1)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_pool(POOL, tmp_path_factory.mktemp("pool"), progress=False)


def test_pool_shard_nan_depth_and_bit_flip(pool, tmp_path):
    root = Path(shutil.copytree(pool, tmp_path / "p"))
    st, js = shard_paths(root, 1)
    t = load_file(st); t["depth"][0, 0, 2, 2] = float("nan")
    with safe_open(str(st), framework="pt") as f: meta = f.metadata()
    data = st_bytes(t, meta); st.write_bytes(data)
    rec = json.loads(js.read_text()); rec["sha256"] = _sha(data); js.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"shard_00001.safetensors: tensor 'depth': contains NaN"):
        PoolImages(root)
    st0 = shard_paths(root, 0)[0]
    _flip_data_byte(st0)
    with pytest.raises(ValueError, match=r"shard_00000.safetensors: sha256 .*; delete it and shard_00000.json, then run build_pool again"):
        PoolImages(root, max_rooms=1)


def test_pool_shard_of_the_wrong_shape_and_old_records(pool, tmp_path):
    root = Path(shutil.copytree(pool, tmp_path / "p"))
    st, js = shard_paths(root, 0)
    t = load_file(st); t["rgb"] = t["rgb"][:, :, :, :5].contiguous()
    st.write_bytes(st_bytes(t))
    rec = json.loads(js.read_text()); del rec["sha256"]; js.write_text(json.dumps(rec))   # a record without a checksum
    with pytest.raises(ValueError, match=r"shard_00000.safetensors: tensor 'rgb': expected shape \[1, 1, 12, 16, 3\], got \[1, 1, 12, 5, 3\]"):
        PoolImages(root)
    shutil.copy(shard_paths(pool, 0)[0], st)
    assert len(PoolImages(root)) == 2                                       # no sha256 recorded: loads, unverified


# ---------------------------------------------------------------- text that is not UTF-8

def test_non_utf8_dataset_and_pool_config(built, pool, tmp_path):
    root = _copy(built, tmp_path)
    (root / "config.json").write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"bad/config.json: not UTF-8 text"):
        D.RoomViews(root, "train")
    proot = Path(shutil.copytree(pool, tmp_path / "p"))
    (proot / "config.json").write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"p/config.json: not UTF-8 text"):
        PoolImages(proot)


def test_non_utf8_json_the_project_writes(tmp_path):
    from condense_nb.core import load_json, load_checkpoint, save_checkpoint
    (tmp_path / "x.json").write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"x.json: not UTF-8 text \(byte 13"):
        load_json(tmp_path / "x.json")
    save_checkpoint(tmp_path / "run", 1, dict(w=torch.zeros(2)))
    (tmp_path / "run" / "latest.json").write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"run/latest.json: not UTF-8 text"):
        load_checkpoint(tmp_path / "run")


def test_non_utf8_transforms_json(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "transforms.json").write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"transforms.json: not UTF-8 text"):
        load_transforms(tmp_path)


def _modelnet(folder: Path) -> Path:
    folder.mkdir()
    with h5py.File(folder / "ply_data_train0.h5", "w") as f:
        f["data"] = np.zeros((2, 8, 3), np.float32); f["label"] = np.array([[0], [1]], np.uint8)
    return folder


def test_non_utf8_shape_names(tmp_path):
    mn = _modelnet(tmp_path / "mn")
    (mn / "shape_names.txt").write_bytes("chair\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"shape_names.txt: not UTF-8 text"):
        load_modelnet40_h5(mn, "train")
    (mn / "shape_names.txt").write_text("chair\ntable\n")
    assert load_modelnet40_h5(mn, "train")[0].shape == (2, 8, 3)


# ---------------------------------------------------------------- real-data loaders

def _h5(path: Path, **arrays) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items(): f[k] = v
    return path


def test_scanobjectnn_float64_beyond_float32(tmp_path):
    data = np.zeros((2, 8, 3)); data[1, 2, 0] = 1e300                      # finite as float64, inf as float32
    p = _h5(tmp_path / "huge.h5", data=data, label=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"huge.h5: dataset 'data' holds values beyond the float32 range"):
        load_scanobjectnn_h5(p)


def test_scanobjectnn_float_mask_with_nan(tmp_path):
    mask = np.ones((2, 8)); mask[0, 3] = np.nan                             # would become int64 min
    p = _h5(tmp_path / "m.h5", data=np.zeros((2, 8, 3), np.float32), label=np.array([0, 1]), mask=mask)
    with pytest.raises(ValueError, match=r"m.h5: dataset 'mask' must hold whole numbers"):
        load_scanobjectnn_h5(p)
    ok = _h5(tmp_path / "ok.h5", data=np.zeros((2, 8, 3), np.float32), label=np.array([0, 1]), mask=np.where(np.isnan(mask), -1.0, mask))
    assert load_scanobjectnn_h5(ok)[2].tolist()[0][3] == -1                 # a float mask of whole numbers is fine


def test_depth_npy_all_nan_empty_and_too_large(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"nan.npy: depth map is NaN everywhere"):
        read_depth(tmp_path / "nan.npy", scale=1.0)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.npy: cannot read depth map \(EOFError"):
        read_depth(tmp_path / "empty.npy")
    for shape in ((0, 0), (0, 5)):                                          # a valid .npy holding no pixels
        np.save(tmp_path / "zero.npy", np.zeros(shape, np.uint16))
        with pytest.raises(ValueError, match=r"zero.npy: depth map is empty \(shape \[0, "):
            read_depth(tmp_path / "zero.npy", size=(4, 3))
    np.save(tmp_path / "big.npy", np.full((3, 4), 1e300))
    with pytest.raises(ValueError, match=r"big.npy: depth values up to 1e\+300 m do not fit float32"):
        read_depth(tmp_path / "big.npy", scale=1.0)
    np.save(tmp_path / "some.npy", np.array([[1.0, np.nan]], np.float32))
    assert read_depth(tmp_path / "some.npy", scale=1.0).tolist() == [[1.0, float("inf")]]   # a NaN pixel is still "no depth"


def _folder(tmp_path: Path, **meta) -> Path:
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    m = {"fl_x": 5.0, "fl_y": 5.0, "cx": 3.0, "cy": 2.0, "w": 6, "h": 4,
         "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}], **meta}
    (tmp_path / "transforms.json").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))
    return tmp_path


def test_nerfstudio_index_out_of_range(tmp_path):
    ds = NerfstudioScene(_folder(tmp_path), load_depth=False)
    assert ds[-1]["index"] == 0
    with pytest.raises(IndexError, match=r"index 3 out of range for 1 frames of .*transforms.json"):
        ds[3]


@pytest.mark.parametrize("key", ["camera_angle_x", "camera_angle_y"])
def test_camera_angle_beyond_pi_names_its_key(tmp_path, key):
    meta = dict(fl_x=None, fl_y=None, camera_angle_x=1.0) | {key: 4.0}
    with pytest.raises(ValueError, match=rf"frames\[0\]: '{key}' must be a field of view in radians in \(0, pi\), got 4.0"):
        load_transforms(_folder(tmp_path, **meta))


def test_normalize_unit_sphere_on_an_empty_cloud():
    with pytest.raises(ValueError, match="points: expected at least one point"):
        normalize_unit_sphere(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"points: expected shape \[N, 3\] with N >= 1, got \[0, 3\]"):
        shapes.normalize_unit_sphere(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="points: contains NaN"):
        shapes.normalize_unit_sphere(torch.tensor([[0.0, 0, 0], [float("nan"), 1, 0]]))


# ---------------------------------------------------------------- determinism

def test_two_builds_are_byte_identical(built, tmp_path):
    again = D.build_preset(MICRO, root=tmp_path, progress=False)
    hashes = lambda root: {p.relative_to(root).as_posix(): _sha(p.read_bytes()) for p in sorted(root.rglob("*"))
                           if p.is_file() and p.name != "build.json"}
    a, b = hashes(built), hashes(again)
    assert "shapes/clean_train.safetensors" in a and "shapes/scan_train.safetensors" in a
    assert a == b
    for name in ("clean_train", "scan_train"):                              # several keys would be written in hash order
        with safe_open(str(again / "shapes" / f"{name}.safetensors"), framework="pt") as f: assert len(f.metadata()) == 1
    paths = [tmp_path / f"s{i}.safetensors" for i in range(4)]              # and a few more writes of one set, same bytes
    assert len({D.build_shape_set("clean", "train", MICRO, p).read_bytes() for p in paths}) == 1


WRITE_ALL = """
import math, sys, torch
from pathlib import Path
from condense_nb import datasets as D
from condense_nb.core import save_checkpoint
from condense_nb.lifting import FeatureGaussians, LiftConfig, save_gaussians
from dataclasses import asdict
out = Path(sys.argv[1])
D.build_preset(D.get_preset("tiny", name="bad", rooms_train=1, rooms_val=1, rooms_test=1, views_per_room=2, width=24, height=16,
               points_per_room=256, dup_rooms=0, shapes_train=1, shapes_val=0, shapes_test=0, points_per_shape=64),
               root=out / "data", progress=False)
torch.manual_seed(0)                                    # the feature decoder is initialised from the global RNG
g = torch.Generator().manual_seed(0)
w = torch.nn.Parameter(torch.randn(5, 3, generator=g))
opt = torch.optim.AdamW([w], lr=0.1); w.sum().backward(); opt.step()
save_checkpoint(out / "run", 1, dict(w=w.detach(), b=torch.ones(2)), opt, meta=dict(config=dict(lr=0.1, steps=3), history=[1.0, 0.5]))
n = 6
gs = FeatureGaussians(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g), log_scales=torch.full((n, 3), math.log(0.08)),
                      opacity_logits=torch.randn(n, generator=g), sh0=torch.randn(n, 3, generator=g), features=torch.randn(n, 3, generator=g),
                      teacher_dim=4)
save_gaussians(gs, out / "g" / "room.safetensors", meta=dict(scene="room", rank=0, config=asdict(LiftConfig())))
"""


def test_two_processes_write_the_same_bytes(tmp_path):
    "Dataset, checkpoint and Gaussian files written by two fresh processes (each its own hash-map seed) are byte-identical."
    import subprocess, sys
    hashes = []
    for k in range(2):
        out = tmp_path / f"p{k}"
        subprocess.run([sys.executable, "-c", WRITE_ALL, str(out)], check=True, capture_output=True, text=True, timeout=300)
        hashes.append({p.relative_to(out).as_posix(): _sha(p.read_bytes()) for p in sorted(out.rglob("*"))
                       if p.is_file() and p.name != "build.json"})
    names = set(hashes[0])
    assert {"run/ckpt/step_0000001.safetensors", "run/latest.json", "g/room.safetensors", "data/bad/shapes/scan_train.safetensors"} <= names
    assert hashes[0] == hashes[1]
