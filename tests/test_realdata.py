"""Tests of condense_nb.realdata: real-format loaders read back small files written here, by hand, in the
published formats (nerfstudio transforms.json + PNG, ModelNet40 ply_hdf5_2048, ScanObjectNN h5), and the
OpenGL -> OpenCV camera conversion agrees with independent geometry."""
import importlib.util, json, math, sys, zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from condense_nb.cameras import look_at, project, camera_center
from condense_nb.realdata import (load_transforms, NerfstudioScene, read_depth, c2w_opengl_to_viewmat, viewmat_to_c2w_opengl,
                                  save_nerfstudio_folder, load_modelnet40_h5, load_scanobjectnn_h5, scanobjectnn_path,
                                  SCANOBJECTNN_CLASSES, MODELNET40_CLASSES, PointCloudDataset, safe_extract)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------------
# helpers that write the formats by hand (independent of the code under test)

def gl_c2w(eye, target, world_up=(0.0, 0.0, 1.0)) -> np.ndarray:
    "OpenGL/Blender camera->world matrix built from its definition: columns right, up, backward, centre."
    eye, target, world_up = (np.asarray(v, dtype=np.float64) for v in (eye, target, world_up))
    back = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross(world_up, back); right /= np.linalg.norm(right)
    up = np.cross(back, right)
    M = np.eye(4); M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, up, back, eye
    return M


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_folder(root: Path, meta: dict, images: dict[str, np.ndarray] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, arr in (images or {}).items(): write_png(root / rel, arr)
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def write_h5(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items(): f[k] = v
    return path


INF = float("inf")


# ----------------------------------------------------------------------------------------------------------------------
# nerfstudio folders

def test_shared_intrinsics_rgb_and_depth_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    H, W = 5, 7
    rgbs = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    depths = [rng.integers(0, 9000, (H, W)).astype(np.uint16) for _ in range(3)]
    depths[0][0, 0] = 0
    images = {}
    frames = []
    for i in range(3):
        images[f"images/f{i}.png"], images[f"depth/f{i}.png"] = rgbs[i], depths[i]
        frames.append({"file_path": f"images/f{i}.png", "depth_file_path": f"depth/f{i}.png",
                       "transform_matrix": gl_c2w([3.0, i - 1.0, 1.0], [0, 0, 0]).tolist()})
    meta = {"camera_model": "PINHOLE", "fl_x": 6.5, "fl_y": 6.0, "cx": 3.4, "cy": 2.6, "w": W, "h": H, "frames": frames}
    folder = write_folder(tmp_path / "scene", meta, images)

    m = load_transforms(folder)
    assert (m["width"], m["height"]) == (W, H)
    assert m["image_paths"] == [folder / f"images/f{i}.png" for i in range(3)]
    assert m["depth_paths"] == [folder / f"depth/f{i}.png" for i in range(3)]
    assert m["K"].shape == (3, 3, 3) and m["viewmats"].shape == (3, 4, 4)
    assert torch.equal(m["K"][1], torch.tensor([[6.5, 0, 3.4], [0, 6.0, 2.6], [0, 0, 1]], dtype=torch.float32))

    ds = NerfstudioScene(folder)
    assert len(ds) == 3
    for i in range(3):
        it = ds[i]
        assert it["rgb"].shape == (H, W, 3) and it["rgb"].dtype == torch.float32
        assert torch.equal((it["rgb"] * 255).round().to(torch.uint8), torch.from_numpy(rgbs[i]))
        expect = torch.from_numpy(depths[i].astype(np.float64) / 1000).float()
        expect[torch.from_numpy(depths[i]) == 0] = INF
        assert torch.equal(torch.isinf(it["depth"]), torch.isinf(expect))
        fin = torch.isfinite(expect)
        torch.testing.assert_close(it["depth"][fin], expect[fin])
    assert torch.isinf(ds[0]["depth"][0, 0])
    assert ds[-1]["index"] == 2


def test_per_frame_intrinsics_override_top_level(tmp_path):
    img_a, img_b = np.zeros((4, 6, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)
    meta = {"fl_x": 5.0, "fl_y": 5.0, "cx": 3.0, "cy": 2.0, "w": 6, "h": 4, "frames": [
        {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()},
        {"file_path": "b.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 9.0, "fl_y": 8.0, "cx": 5.0, "cy": 4.0, "w": 10, "h": 8}]}
    m = load_transforms(write_folder(tmp_path, meta, {"a.png": img_a, "b.png": img_b}))
    assert m["K"][0].tolist() == [[5, 0, 3], [0, 5, 2], [0, 0, 1]]
    assert m["K"][1].tolist() == [[9, 0, 5], [0, 8, 4], [0, 0, 1]]
    assert m["widths"] == [6, 10] and m["heights"] == [4, 8] and m["width"] is None and m["height"] is None
    ds = NerfstudioScene(tmp_path, load_depth=False)
    assert ds[1]["rgb"].shape == (8, 10, 3) and "depth" not in ds[1]


def test_blender_camera_angle_x_and_size_from_image(tmp_path):
    # the original NeRF synthetic format: camera_angle_x, no w/h, file_path without extension, 3x4 pose
    meta = {"camera_angle_x": 2 * math.atan(0.5), "frames": [{"file_path": "./train/r_0", "transform_matrix": np.eye(4)[:3].tolist()}]}
    m = load_transforms(write_folder(tmp_path, meta, {"train/r_0.png": np.zeros((12, 20, 4), np.uint8)}))
    # tan(fov/2) = 0.5 => f = (W/2) / 0.5 = W
    torch.testing.assert_close(m["K"][0], torch.tensor([[20.0, 0, 10], [0, 20, 6], [0, 0, 1]]))
    assert m["image_paths"][0].name == "r_0.png" and (m["width"], m["height"]) == (20, 12)
    assert NerfstudioScene(tmp_path, load_depth=False)[0]["rgb"].shape == (12, 20, 3)   # alpha dropped


def test_opengl_poses_convert_to_the_opencv_camera_looking_at_the_target(tmp_path):
    target = np.array([0.3, -0.2, 0.5])
    eyes = [np.array([3.0, 0.0, 1.5]), np.array([-1.0, 2.5, 2.0]), np.array([0.5, -3.0, 0.8])]
    fx, fy, cx, cy, W, H = 40.0, 42.0, 31.0, 23.5, 64, 48
    frames = [{"file_path": f"im{i}.png", "transform_matrix": gl_c2w(e, target).tolist()} for i, e in enumerate(eyes)]
    meta = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": W, "h": H, "frames": frames}
    m = load_transforms(write_folder(tmp_path, meta, {f"im{i}.png": np.zeros((H, W, 3), np.uint8) for i in range(3)}))
    for i, eye in enumerate(eyes):
        K, V = m["K"][i], m["viewmats"][i]
        d = float(np.linalg.norm(eye - target))
        # the camera sits at eye ...
        torch.testing.assert_close(camera_center(V), torch.tensor(eye, dtype=torch.float32), atol=1e-5, rtol=0)
        # ... and is the camera cameras.look_at builds (OpenCV axes, world up +z)
        torch.testing.assert_close(V, look_at(eye, target), atol=1e-5, rtol=0)
        # the target lands on the principal point at depth |eye - target|
        uv, z = project(torch.tensor(target[None], dtype=torch.float32), K, V)
        torch.testing.assert_close(uv[0], torch.tensor([cx, cy]), atol=1e-4, rtol=0)
        torch.testing.assert_close(z[0], torch.tensor(d, dtype=torch.float32), atol=1e-5, rtol=0)
        # a step along the camera's right (OpenGL +x) moves right in the image by f*step/d; a step along its up
        # (OpenGL +y) moves *up*, i.e. to a smaller row
        c2w = np.array(frames[i]["transform_matrix"])
        step = 0.1
        for axis, expect in ((0, [cx + fx * step / d, cy]), (1, [cx, cy - fy * step / d])):
            p = torch.tensor((target + step * c2w[:3, axis])[None], dtype=torch.float32)
            uv, z = project(p, K, V)
            torch.testing.assert_close(uv[0], torch.tensor(expect, dtype=torch.float32), atol=1e-4, rtol=0)
            torch.testing.assert_close(z[0], torch.tensor(d, dtype=torch.float32), atol=1e-5, rtol=0)
        # a point behind the camera (along OpenGL +z) has negative z-depth
        assert project(torch.tensor((eye + c2w[:3, 2])[None], dtype=torch.float32), K, V)[1][0] < 0


def test_conversion_functions_invert_each_other_and_batch():
    c2w = torch.stack([torch.tensor(gl_c2w([1.0 + i, -2.0, 1.0], [0, 0, 0.3 * i])) for i in range(4)])
    V = c2w_opengl_to_viewmat(c2w)
    assert V.shape == (4, 4, 4) and V.dtype == torch.float64
    torch.testing.assert_close(viewmat_to_c2w_opengl(V), c2w)
    # V = (c2w S)^-1 = S c2w^-1 with S = diag(1,-1,-1,1), so V c2w = S
    torch.testing.assert_close(V @ c2w, torch.diag(torch.tensor([1.0, -1, -1, 1], dtype=torch.float64)).expand(4, 4, 4))


def test_depth_mm_reads_back_in_metres_with_scale_and_resizing(tmp_path):
    write_png(tmp_path / "d.png", np.array([[1000, 2500], [0, 65535]], dtype=np.uint16))
    d = read_depth(tmp_path / "d.png")
    assert d.dtype == torch.float32 and torch.isinf(d[1, 0])
    torch.testing.assert_close(d[[0, 0, 1], [0, 1, 1]], torch.tensor([1.0, 2.5, 65.535]))
    # a low-resolution sensor map is resized to the image by nearest neighbour: each value fills a 2x2 block
    up = read_depth(tmp_path / "d.png", size=(4, 4))
    assert torch.equal(up[:2, :2], torch.full((2, 2), 1.0)) and torch.equal(up[:2, 2:], torch.full((2, 2), 2.5))
    assert torch.isinf(up[2:, :2]).all()
    # .npy depth, scale applied, NaN and 0 become inf
    np.save(tmp_path / "d.npy", np.array([[2000.0, np.nan], [0.0, 500.0]], dtype=np.float32))
    torch.testing.assert_close(read_depth(tmp_path / "d.npy")[[0, 1], [0, 1]], torch.tensor([2.0, 0.5]))
    assert torch.isinf(read_depth(tmp_path / "d.npy")[[0, 1], [1, 0]]).all()


def test_depth_unit_scale_factor_and_depth_scale_argument(tmp_path):
    meta = {"fl_x": 2.0, "fl_y": 2.0, "cx": 1.0, "cy": 1.0, "w": 2, "h": 2, "depth_unit_scale_factor": 1e-4,
            "frames": [{"file_path": "a.png", "depth_file_path": "a_depth.png", "transform_matrix": np.eye(4).tolist()}]}
    folder = write_folder(tmp_path, meta, {"a.png": np.zeros((2, 2, 3), np.uint8),
                                           "a_depth.png": np.array([[10000, 20000], [1, 0]], dtype=np.uint16)})
    torch.testing.assert_close(NerfstudioScene(folder)[0]["depth"][0], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(NerfstudioScene(folder, depth_scale=1e-3)[0]["depth"][0], torch.tensor([10.0, 20.0]))


def test_save_nerfstudio_folder_round_trip(tmp_path):
    V = torch.stack([look_at([2.0, 1.0, 1.0], [0, 0, 0]), look_at([-2.0, 0.5, 1.5], [0, 0, 0.2])])
    K = torch.tensor([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]])
    rgbs = torch.rand(2, 6, 8, 3)
    depths = 1 + 3 * torch.rand(2, 6, 8); depths[0, 0, 0] = INF
    save_nerfstudio_folder(tmp_path, rgbs, K, V, depths)
    raw = json.loads((tmp_path / "transforms.json").read_text())
    # the written pose is the OpenGL camera->world matrix: its 3rd column points from the target back to the eye
    back = np.array(raw["frames"][0]["transform_matrix"])[:3, 2]
    np.testing.assert_allclose(back, np.array([2.0, 1, 1]) / np.linalg.norm([2.0, 1, 1]), atol=1e-6)
    ds = NerfstudioScene(tmp_path)
    torch.testing.assert_close(ds.viewmats, V, atol=1e-6, rtol=0)
    assert (ds[1]["rgb"] - rgbs[1]).abs().max() <= 0.5 / 255 + 1e-6
    d = ds[0]["depth"]
    assert torch.isinf(d[0, 0]) and (d.flatten()[1:] - depths[0].flatten()[1:]).abs().max() <= 0.5e-3 + 1e-6


def test_distortion_warns(tmp_path):
    meta = {"camera_model": "OPENCV_FISHEYE", "fl_x": 2.0, "fl_y": 2.0, "cx": 1.0, "cy": 1.0, "w": 2, "h": 2, "k1": 0.1,
            "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}
    with pytest.warns(UserWarning, match="undistort"):
        m = load_transforms(write_folder(tmp_path, meta, {"a.png": np.zeros((2, 2, 3), np.uint8)}))
    assert m["distortion"][0, 0] == pytest.approx(0.1) and m["camera_model"] == "OPENCV_FISHEYE"


GOOD = {"fl_x": 5.0, "fl_y": 5.0, "cx": 3.0, "cy": 2.0, "w": 6, "h": 4,
        "frames": [{"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist()}]}


def _frame(**kw):
    return {**GOOD, "frames": [{**GOOD["frames"][0], **kw}]}


@pytest.mark.parametrize("meta, message", [
    ({k: v for k, v in GOOD.items() if k != "frames"}, "transforms.json: missing key 'frames'"),
    ({**GOOD, "frames": [{"transform_matrix": np.eye(4).tolist()}]}, "frames[0]: missing key 'file_path'"),
    ({**GOOD, "frames": [{"file_path": "images/a.png"}]}, "frames[0]: missing key 'transform_matrix'"),
    (_frame(transform_matrix=np.eye(3).tolist()), "'transform_matrix' expected shape [4, 4] (or [3, 4]), got [3, 3]"),
    (_frame(transform_matrix=[[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "'transform_matrix' must be a 4x4 matrix"),
    (_frame(transform_matrix=np.diag([1.0, 1, 1, 1]).tolist()[:3] + [[0, 0, 1, 1]]), "last row must be [0, 0, 0, 1]"),
    (_frame(transform_matrix=np.diag([2.0, 2, 2, 1]).tolist()), "not a rigid camera-to-world pose"),
    (_frame(transform_matrix=np.diag([1.0, 1, -1, 1]).tolist()), "not a rigid camera-to-world pose"),   # a reflection
    (_frame(file_path="images/missing.png"), "frames[0]: image file not found"),
    (_frame(depth_file_path="depth/missing.png"), "frames[0]: depth file not found"),
    ({k: v for k, v in GOOD.items() if k != "cx"}, "frames[0]: missing intrinsics key 'cx'"),
    ({**GOOD, "fl_x": -1.0}, "'fl_x': expected a positive number"),
    ({**GOOD, "depth_unit_scale_factor": 0}, "'depth_unit_scale_factor': expected a positive number"),
    ([1, 2, 3], "expected a JSON object at the top level"),
])
def test_bad_transforms_errors_name_the_file(tmp_path, meta, message):
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 6, 3), np.uint8))
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e: load_transforms(tmp_path)
    assert message in str(e.value) and str(tmp_path / "transforms.json") in str(e.value)


def test_bad_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="transforms.json: file not found"): load_transforms(tmp_path / "nothing")
    (tmp_path / "transforms.json").write_text("{oops")
    with pytest.raises(ValueError, match="transforms.json: malformed JSON"): load_transforms(tmp_path)
    # no depth paths but depth requested
    write_folder(tmp_path, GOOD, {"images/a.png": np.zeros((4, 6, 3), np.uint8)})
    with pytest.raises(ValueError, match="load_depth=True but 1 frame"): NerfstudioScene(tmp_path)
    # image size disagrees with w, h
    write_folder(tmp_path, {**GOOD, "w": 8}, {})
    with pytest.raises(ValueError, match=r"a.png: image is 6x4 but transforms.json says w=8, h=4"): NerfstudioScene(tmp_path, load_depth=False)[0]
    # an image that is not an image
    (tmp_path / "images" / "a.png").write_text("not a png")
    with pytest.raises(ValueError, match="a.png: cannot read image"): NerfstudioScene(tmp_path, load_depth=False)[0]
    # a colour image given as depth
    write_folder(tmp_path, _frame(depth_file_path="images/c.png"), {"images/a.png": np.zeros((4, 6, 3), np.uint8),
                                                                     "images/c.png": np.zeros((4, 6, 3), np.uint8)})
    with pytest.raises(ValueError, match="c.png: expected a single-channel depth map"): NerfstudioScene(tmp_path)[0]


# ----------------------------------------------------------------------------------------------------------------------
# ModelNet40 ply_hdf5_2048

def write_modelnet(folder: Path, rng, sizes=(("ply_data_train0.h5", 5), ("ply_data_train1.h5", 3), ("ply_data_test0.h5", 4)),
                   n_classes=40, lists=True, P=2048):
    written = {}
    for name, n in sizes:
        data = rng.normal(size=(n, P, 3)).astype(np.float32)
        label = rng.integers(0, n_classes, (n, 1)).astype(np.uint8)
        write_h5(folder / name, data=data, label=label, normal=rng.normal(size=(n, P, 3)).astype(np.float32))
        written[name] = (data, label)
    if lists:
        for split in ("train", "test"):
            (folder / f"{split}_files.txt").write_text("".join(f"data/modelnet40_ply_hdf5_2048/{n}\n" for n, _ in sizes if f"_{split}" in n))
    return written


def test_modelnet40_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(1)
    w = write_modelnet(tmp_path, rng)
    (tmp_path / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    pts, labels, names = load_modelnet40_h5(tmp_path, "train")
    assert names == list(MODELNET40_CLASSES) and len(names) == 40
    assert pts.shape == (8, 2048, 3) and pts.dtype == torch.float32 and labels.dtype == torch.int64 and labels.shape == (8,)
    np.testing.assert_array_equal(pts.numpy(), np.concatenate([w["ply_data_train0.h5"][0], w["ply_data_train1.h5"][0]]))
    np.testing.assert_array_equal(labels.numpy(), np.concatenate([w["ply_data_train0.h5"][1], w["ply_data_train1.h5"][1]])[:, 0])
    pts, labels, _ = load_modelnet40_h5(tmp_path, "test")
    np.testing.assert_array_equal(pts.numpy(), w["ply_data_test0.h5"][0])


def test_modelnet40_without_list_files_orders_numerically(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [(f"ply_data_train{i}.h5", 1) for i in (10, 2, 0)]
    w = write_modelnet(tmp_path, rng, sizes, lists=False, P=16)
    pts, _, names = load_modelnet40_h5(tmp_path, "train")
    assert names == list(MODELNET40_CLASSES)          # built-in names when shape_names.txt is absent
    np.testing.assert_array_equal(pts.numpy(), np.concatenate([w[f"ply_data_train{i}.h5"][0] for i in (0, 2, 10)]))


def test_modelnet40_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="folder not found"): load_modelnet40_h5(tmp_path / "nope")
    with pytest.raises(ValueError, match="no train files"): load_modelnet40_h5(tmp_path)
    (tmp_path / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n")
    with pytest.raises(ValueError, match=r"train_files.txt: lists 'data/modelnet40_ply_hdf5_2048/ply_data_train0.h5'"):
        load_modelnet40_h5(tmp_path)
    write_h5(tmp_path / "ply_data_train0.h5", data=np.zeros((2, 8, 3), np.float32), label=np.array([[0], [3]], np.uint8))
    (tmp_path / "shape_names.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"ply_data_train0.h5: labels must lie in \[0, 3\), got values from 0 to 3"):
        load_modelnet40_h5(tmp_path)
    with pytest.raises(ValueError, match="split: unknown value"): load_modelnet40_h5(tmp_path, "val")


# ----------------------------------------------------------------------------------------------------------------------
# ScanObjectNN h5

def test_scanobjectnn_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    path = scanobjectnn_path(tmp_path, "PB_T50_RS", "train")
    assert path == tmp_path / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"
    assert scanobjectnn_path(tmp_path, "OBJ_ONLY", "test") == tmp_path / "main_split_nobg" / "test_objectdataset.h5"
    data = rng.normal(size=(6, 2048, 3)).astype(np.float32)
    label = rng.integers(0, 15, 6).astype(np.int64)
    mask = np.where(rng.uniform(size=(6, 2048)) < 0.2, -1, rng.integers(0, 5, (6, 2048))).astype(np.int32)
    write_h5(path, data=data, label=label, mask=mask)
    p, l, m = load_scanobjectnn_h5(path)
    np.testing.assert_array_equal(p.numpy(), data); np.testing.assert_array_equal(l.numpy(), label)
    np.testing.assert_array_equal(m.numpy(), mask)
    write_h5(tmp_path / "nomask.h5", data=data, label=label)
    assert load_scanobjectnn_h5(tmp_path / "nomask.h5")[2] is None


def test_scanobjectnn_class_order_matches_the_authors_modelnet_mapping():
    # hkust-vgd/scanobjectnn mapping2.py: MODELNET_TO_OBJECTDATASET = {2:10, 4:8, 8:4, 12:5, 13:7, 14:3, 22:6, 29:12, 30:13, 33:9, 35:14, ...}
    pairs = {2: 10, 4: 8, 8: 4, 12: 5, 13: 7, 22: 6, 29: 12, 30: 13, 33: 9, 35: 14}
    same = {"bed": "bed", "bookshelf": "shelf", "chair": "chair", "desk": "desk", "door": "door", "monitor": "display",
            "sink": "sink", "sofa": "sofa", "table": "table", "toilet": "toilet"}
    assert len(SCANOBJECTNN_CLASSES) == 15
    for mn, so in pairs.items(): assert SCANOBJECTNN_CLASSES[so] == same[MODELNET40_CLASSES[mn]]


@pytest.mark.parametrize("arrays, message", [
    (dict(label=np.arange(4)), "missing dataset 'data'"),
    (dict(data=np.zeros((4, 16, 3), np.float32)), "missing dataset 'label'"),
    (dict(data=np.zeros((4, 16)), label=np.arange(4)), "dataset 'data' expected shape [N, P, 3], got [4, 16]"),
    (dict(data=np.zeros((4, 16, 4)), label=np.arange(4)), "dataset 'data' expected shape [N, P, 3], got [4, 16, 4]"),
    (dict(data=np.zeros((4, 16, 3)), label=np.zeros((4, 2), int)), "dataset 'label' expected shape [N] or [N, 1], got [4, 2]"),
    (dict(data=np.zeros((4, 16, 3)), label=np.arange(5)), "'data' holds 4 point clouds but 'label' holds 5 labels"),
    (dict(data=np.full((4, 16, 3), np.inf), label=np.arange(4)), "dataset 'data' contains NaN or infinite values"),
    (dict(data=np.zeros((4, 16, 3)), label=np.array([0, 1, 2, 15])), "labels must lie in [0, 15), got values from 0 to 15"),
    (dict(data=np.zeros((4, 16, 3)), label=np.array([0, -1, 2, 3])), "labels must lie in [0, 15)"),
    (dict(data=np.zeros((4, 16, 3)), label=np.array([0.5, 1, 2, 3])), "dataset 'label' must hold whole-number class ids"),
    (dict(data=np.zeros((4, 16, 3)), label=np.arange(4), mask=np.zeros((4, 15))), "dataset 'mask' expected shape [4, 16], got [4, 15]"),
    (dict(data=np.zeros((0, 16, 3)), label=np.zeros(0, int)), "dataset 'data' is empty"),
])
def test_bad_h5_errors_name_the_file(tmp_path, arrays, message):
    path = write_h5(tmp_path / "broken.h5", **arrays)
    with pytest.raises(ValueError) as e: load_scanobjectnn_h5(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_not_h5_and_missing_file(tmp_path):
    (tmp_path / "x.h5").write_text("plain text, not HDF5")
    with pytest.raises(ValueError, match="x.h5: not an HDF5 file"): load_scanobjectnn_h5(tmp_path / "x.h5")
    with pytest.raises(ValueError, match="y.h5: file not found"): load_scanobjectnn_h5(tmp_path / "y.h5")
    with h5py.File(tmp_path / "g.h5", "w") as f: f.create_group("data"); f["label"] = np.arange(2)
    with pytest.raises(ValueError, match="g.h5: missing dataset 'data'"): load_scanobjectnn_h5(tmp_path / "g.h5")


# ----------------------------------------------------------------------------------------------------------------------
# PointCloudDataset

def test_point_cloud_dataset_normalises_to_unit_sphere():
    rng = np.random.default_rng(4)
    pts = torch.from_numpy(rng.normal(size=(3, 50, 3)) * [1, 2, 3] + [5, -1, 2]).float()
    ds = PointCloudDataset(pts, torch.tensor([0, 1, 2]))
    for i in range(3):
        q = ds[i]["points"]
        c = pts[i] - pts[i].mean(0)                                         # by hand
        torch.testing.assert_close(q, c / c.norm(dim=1).max(), atol=1e-6, rtol=0)
        torch.testing.assert_close(q.norm(dim=1).max(), torch.tensor(1.0))
        assert ds[i]["label"].item() == i


def test_point_cloud_dataset_subsampling_is_deterministic_and_draws_from_the_shape():
    pts = torch.arange(2 * 40 * 3, dtype=torch.float32).reshape(2, 40, 3)   # every row distinct
    ds = PointCloudDataset(pts, [0, 1], n_points=10, normalize=False, seed=7)
    a = ds[1]["points"]
    assert a.shape == (10, 3) and torch.equal(ds[1]["points"], a)
    rows = {tuple(r) for r in pts[1].tolist()}
    assert all(tuple(r) in rows for r in a.tolist()) and len({tuple(r) for r in a.tolist()}) == 10
    assert not torch.equal(PointCloudDataset(pts, [0, 1], n_points=10, normalize=False, seed=8)[1]["points"], a)
    ds.set_epoch(1); b = ds[1]["points"]; assert not torch.equal(b, a)
    ds.set_epoch(0); assert torch.equal(ds[1]["points"], a)
    assert torch.equal(PointCloudDataset(pts, [0, 1], n_points=None, normalize=False)[0]["points"], pts[0])


def test_point_cloud_dataset_augmentation_is_a_similarity_about_the_up_axis():
    rng = np.random.default_rng(5)
    pts = torch.from_numpy(rng.normal(size=(4, 64, 3))).float()
    plain = PointCloudDataset(pts, [0] * 4)
    for up in (1, 2):
        aug = PointCloudDataset(pts, [0] * 4, augment=True, seed=1, up_axis=up)
        for i in range(4):
            a, b = aug[i]["points"], plain[i]["points"]
            s = a.norm(dim=1).max() / b.norm(dim=1).max()                   # the scale factor
            assert 0.9 - 1e-6 <= s <= 1.1 + 1e-6
            torch.testing.assert_close(a[:, up], s * b[:, up], atol=1e-5, rtol=0)      # up only scales
            dist = lambda x: (x[:, None] - x[None]).norm(dim=-1)               # all pairwise distances, exactly
            torch.testing.assert_close(dist(a), s * dist(b), atol=1e-5, rtol=0)
            M = torch.linalg.lstsq(b, a).solution.T / s                       # a = s R b: recover R
            torch.testing.assert_close(M @ M.T, torch.eye(3), atol=1e-4, rtol=0)
            assert torch.det(M) > 0


def test_point_cloud_dataset_errors():
    pts = torch.zeros(2, 10, 3)
    with pytest.raises(ValueError, match=r"n_points \(None: all points\): expected an int in \[1, 10\]"): PointCloudDataset(pts, [0, 1], n_points=11)
    with pytest.raises(ValueError, match=r"labels: expected shape \[2\]"): PointCloudDataset(pts, [0, 1, 2])
    with pytest.raises(ValueError, match=r"points: expected shape \[\*, \*, 3\]"): PointCloudDataset(torch.zeros(2, 10, 2), [0, 1])
    with pytest.raises(ValueError, match="points: contains NaN"): PointCloudDataset(torch.full((2, 10, 3), float("nan")), [0, 1])
    with pytest.raises(ValueError, match="labels: expected class ids >= 0"): PointCloudDataset(pts, [0, -1])


# ----------------------------------------------------------------------------------------------------------------------
# data_scripts: import cleanly, --help, and the offline (local-archive) paths work on small archives

def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_ds_{name}", REPO / "data_scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["fetch_modelnet40", "fetch_scanobjectnn", "convert_scannetpp"])
def test_data_scripts_import_and_help(name, capsys):
    mod = _load_script(name)
    with pytest.raises(SystemExit) as e: mod.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_fetch_modelnet40_from_a_local_archive(tmp_path):
    rng = np.random.default_rng(6)
    src = tmp_path / "src" / "modelnet40_ply_hdf5_2048"
    write_modelnet(src, rng, (("ply_data_train0.h5", 3), ("ply_data_test0.h5", 2)), P=32)
    (src / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    archive = tmp_path / "mn.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in src.iterdir(): z.write(f, f"modelnet40_ply_hdf5_2048/{f.name}")
    mod = _load_script("fetch_modelnet40")
    out = tmp_path / "data" / "modelnet40_ply_hdf5_2048"
    with pytest.raises(ValueError, match="MD5 mismatch"): mod.main(["--archive", str(archive), "--out", str(out)])
    assert mod.main(["--archive", str(archive), "--out", str(out), "--skip-md5"]) == 0
    assert load_modelnet40_h5(out, "test")[0].shape == (2, 32, 3)


def test_fetch_scanobjectnn_from_a_local_archive(tmp_path):
    rng = np.random.default_rng(7)
    archive = tmp_path / "h5_files.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split in ("train", "test"):
            p = scanobjectnn_path(tmp_path / "build" / "h5_files", "PB_T50_RS", split)
            write_h5(p, data=rng.normal(size=(3, 32, 3)).astype(np.float32), label=np.array([0, 5, 14]),
                     mask=np.ones((3, 32), np.int32))
            z.write(p, p.relative_to(tmp_path / "build").as_posix())
        z.writestr("__MACOSX/._junk", "x")
    out = tmp_path / "data" / "scanobjectnn"
    assert _load_script("fetch_scanobjectnn").main([str(archive), "--out", str(out)]) == 0
    p, l, m = load_scanobjectnn_h5(scanobjectnn_path(out, "PB_T50_RS", "test"))
    assert p.shape == (3, 32, 3) and l.tolist() == [0, 5, 14] and not (out / "__MACOSX").exists()


def test_convert_scannetpp_scene_folder(tmp_path):
    # a ScanNet++ scene as its toolkit leaves it after dslr/undistort.py (+ optional depth rendered in mm)
    scene = tmp_path / "scannetpp" / "data" / "abc123"
    dslr = scene / "dslr"
    H, W = 6, 8
    frames = [{"file_path": f"DSC{i:05d}.JPG", "transform_matrix": gl_c2w([2.0, i, 1.0], [0, 0, 0]).tolist()} for i in range(2)]
    test_frames = [{"file_path": "DSC00009.JPG", "transform_matrix": gl_c2w([-2.0, 0, 1.0], [0, 0, 0]).tolist()}]
    meta = {"camera_model": "PINHOLE", "fl_x": 7.0, "fl_y": 7.0, "cx": 4.0, "cy": 3.0, "w": W, "h": H, "k1": 0.0, "k2": 0.0,
            "k3": 0.0, "k4": 0.0, "frames": frames, "test_frames": test_frames}
    (dslr / "nerfstudio").mkdir(parents=True)
    (dslr / "nerfstudio" / "transforms_undistorted.json").write_text(json.dumps(meta))
    (dslr / "undistorted_images").mkdir()
    for fr in frames + test_frames:
        Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(dslr / "undistorted_images" / fr["file_path"], format="JPEG")
        write_png(dslr / "render_depth" / (Path(fr["file_path"]).stem + ".png"), np.full((H, W), 1500, np.uint16))
    out = tmp_path / "out"
    mod = _load_script("convert_scannetpp")
    assert mod.main([str(scene), "--out", str(out), "--depth-dir", str(dslr / "render_depth"), "--split", "all"]) == 0
    ds = NerfstudioScene(out)
    assert len(ds) == 3
    torch.testing.assert_close(ds[0]["depth"], torch.full((H, W), 1.5))
    torch.testing.assert_close(camera_center(ds.viewmats[2]), torch.tensor([-2.0, 0, 1.0]), atol=1e-5, rtol=0)
    out2 = tmp_path / "out_train"
    assert mod.main([str(scene), "--out", str(out2), "--split", "train"]) == 0
    assert len(NerfstudioScene(out2, load_depth=False)) == 2


def test_safe_extract_refuses_escaping_members(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z: z.writestr("../evil.txt", "x")
    with pytest.raises(ValueError, match="unsafe member path"): safe_extract(tmp_path / "evil.zip", tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists()
