"Tests for condense_nb.shapes: clean ModelNet-like clouds, PB_T50_RS-like scans, fixed splits, whole sets."
import functools, math
import numpy as np
import pytest
import torch
from condense_nb import scenes, rooms
from condense_nb.cameras import project
from condense_nb.shapes import (SHAPE_CLASSES, SPLIT_SEED_OFFSETS, CLASS_STRIDE, make_shape, shape_record, make_scan,
                                scan_record, split_items, make_shape_set)

N_CLASSES = len(scenes.OBJECT_CLASSES)


# ---------------------------------------------------------------- independent geometry

def sdf(points, prims):  # points [N, 3] -> [N, P] exact signed distance to each primitive (float64)
    "Analytic signed distances of sphere / box / upright capped cylinder, each in its own frame."
    p = torch.as_tensor(points, dtype=torch.float64)
    C = torch.tensor([q.center for q in prims], dtype=torch.float64)
    H = torch.tensor([q.half for q in prims], dtype=torch.float64)
    yaw = torch.tensor([q.yaw for q in prims], dtype=torch.float64)
    kind = torch.tensor([q.kind for q in prims])
    v = p[:, None, :] - C[None]                                           # [N, P, 3]
    c, s = torch.cos(yaw), torch.sin(yaw)                                 # rotate by -yaw into the local frame
    x, y, z = c * v[..., 0] + s * v[..., 1], -s * v[..., 0] + c * v[..., 1], v[..., 2]
    d_sph = torch.sqrt(x * x + y * y + z * z) - H[:, 0]
    qx, qy, qz = x.abs() - H[:, 0], y.abs() - H[:, 1], z.abs() - H[:, 2]
    out = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2 + qz.clamp_min(0) ** 2)
    d_box = out + torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
    dr, dz = torch.sqrt(x * x + y * y) - H[:, 0], z.abs() - H[:, 2]
    d_cyl = torch.maximum(dr, dz).clamp_max(0) + torch.sqrt(dr.clamp_min(0) ** 2 + dz.clamp_min(0) ** 2)
    return torch.where(kind == scenes.SPHERE, d_sph, torch.where(kind == scenes.BOX, d_box, d_cyl))


def union_sdf(points, prims):  # -> [N]
    return sdf(points, prims).min(1).values


def sdf_normal(points, prims, h=1e-6):  # -> [N, 3] outward unit normal by central differences
    p = torch.as_tensor(points, dtype=torch.float64)
    g = torch.stack([union_sdf(p + h * e, prims) - union_sdf(p - h * e, prims) for e in torch.eye(3, dtype=torch.float64)], -1)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def visible_from(eye, points, prims, tol=2e-3, iters=600):  # eye [3], points [N, 3] -> [N] bool
    "Sphere tracing from the eye towards each point: True when nothing is hit before reaching it."
    eye = torch.as_tensor(eye, dtype=torch.float64); p = torch.as_tensor(points, dtype=torch.float64)
    d = p - eye; L = d.norm(dim=-1); u = d / L[:, None]
    t = torch.zeros_like(L); vis = torch.zeros_like(L, dtype=torch.bool); done = torch.zeros_like(vis)
    for _ in range(iters):
        a = (~done).nonzero()[:, 0]
        if len(a) == 0: break
        reached = t[a] >= L[a] - tol
        vis[a[reached]] = True; done[a[reached]] = True
        a = a[~reached]
        if len(a) == 0: break
        s = union_sdf(eye + t[a, None] * u[a], prims)
        done[a[s < 1e-7]] = True                                         # hit something before the point
        t[a] += s.clamp_min(0)
    return vis


def rotz(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_sdf_helpers_on_known_points():
    prims = [scenes.sphere([0, 0, 1], 0.5, 3, 1, (1, 0, 0)), scenes.box([3, 0, 0], [2, 1, 1], math.pi / 2, 3, 1, (1, 0, 0)),
             scenes.cylinder([0, 5, 0], 1.0, 2.0, 3, 1, (1, 0, 0))]
    pts = torch.tensor([[0, 0, 2.0], [3, 0, 0.5], [3, 1.0, 0], [3.5, 0, 0], [0, 5, 2.0], [0, 7, 0], [0, 5, 0]])
    d = sdf(pts, prims)
    torch.testing.assert_close(d[:, 0][:1], torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(d[1:4, 1], torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))   # box turned by 90°: x-size 1, y-size 2
    torch.testing.assert_close(d[4:, 2], torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    assert visible_from([0, 0, 5], [[0, 0, 1.5]], prims).item()          # the top of the sphere
    assert not visible_from([0, 0, 5], [[0, 0, 0.5]], prims).item()      # its bottom, behind itself


# ---------------------------------------------------------------- clean shapes

@pytest.mark.parametrize("cid", range(N_CLASSES))
def test_clean_shape_is_normalised_surface_of_the_object(cid):
    seed = 100 + cid
    pts, label = make_shape(cid, seed, 768)
    assert label == cid and SHAPE_CLASSES[label] == scenes.OBJECT_CLASSES[cid]
    assert pts.shape == (768, 3) and pts.dtype == torch.float32 and torch.isfinite(pts).all()
    assert abs(pts.norm(dim=-1).max().item() - 1) < 1e-6                 # max norm exactly 1 (float32)
    assert pts.mean(0).abs().max().item() < 1e-6                         # centred on the centroid
    # undo the normalisation with our own centroid and radius of the un-normalised points
    w = shape_record(cid, seed, 768)["world"].double()
    c = w.mean(0); s = (w - c).norm(dim=-1).max()
    torch.testing.assert_close(pts.double(), (w - c) / s, atol=2e-6, rtol=0)
    # the object, rebuilt from the grammar: every point on its surface and inside no part
    prims, _ = rooms.make_object(cid, np.random.default_rng(seed))
    d = union_sdf(w, prims)
    assert d.abs().max().item() < 2e-4, d.abs().max()
    # the cloud covers the whole object: its bounding box matches the primitives' (upright, standing on z = 0)
    ext = torch.tensor([[abs(math.cos(q.yaw)) * q.half[0] + abs(math.sin(q.yaw)) * q.half[1],
                         abs(math.sin(q.yaw)) * q.half[0] + abs(math.cos(q.yaw)) * q.half[1], q.half[2]]
                        if q.kind == scenes.BOX else [q.half[0], q.half[0], q.half[2]] for q in prims], dtype=torch.float64)
    ctr = torch.tensor([q.center for q in prims], dtype=torch.float64)
    lo, hi = ctr - ext, ctr + ext                                         # world boxes of the parts
    diag = (hi.max(0).values - lo.min(0).values).norm()
    assert (w.min(0).values - lo.min(0).values).abs().max() < 0.1 * diag
    assert (w.max(0).values - hi.max(0).values).abs().max() < 0.1 * diag
    assert abs(lo.min(0).values[2].item()) < 1e-6                         # the grammar's objects stand on the floor


def test_clean_shape_deterministic_and_seed_dependent():
    a, _ = make_shape(2, 5, 256)
    torch.testing.assert_close(a, make_shape(2, 5, 256)[0], atol=0, rtol=0)
    torch.testing.assert_close(a, make_shape(np.int64(2), np.int64(5), 256)[0], atol=0, rtol=0)
    for cid in range(N_CLASSES):                                          # other seeds, other objects
        p0, _ = rooms.make_object(cid, np.random.default_rng(0)); p1, _ = rooms.make_object(cid, np.random.default_rng(1))
        assert p0 != p1
        assert not torch.allclose(make_shape(cid, 0, 128)[0], make_shape(cid, 1, 128)[0])


# ---------------------------------------------------------------- scans

@functools.lru_cache(maxsize=None)
def class_scan(cid):  # one 512-point scan per class, shared by the tests below
    return scan_record(cid, 200 + cid, 512)


@pytest.mark.parametrize("cid", range(N_CLASSES))
def test_every_class_scans(cid):
    rec = class_scan(cid)
    pts, label, mask = rec["points"], rec["label"], rec["mask"]
    assert label == cid and pts.shape == (512, 3) and pts.dtype == torch.float32 and torch.isfinite(pts).all()
    assert mask.shape == (512,) and mask.dtype == torch.bool and mask.sum() >= 32
    assert abs(pts.norm(dim=-1).max().item() - 1) < 1e-6 and pts.mean(0).abs().max().item() < 1e-6
    assert abs(rec["background_ratio"] - (1 - mask.float().mean().item())) < 1e-6


def test_background_is_a_real_share():
    ratios = [class_scan(c)["background_ratio"] for c in range(N_CLASSES)]
    assert 0.15 < np.mean(ratios) < 0.7 and max(ratios) > 0.3              # real clutter, yet mostly object


@pytest.mark.parametrize("cid,seed", [(0, 3), (5, 7), (7, 1), (11, 2), (1, 9)])
def test_scan_points_are_what_one_camera_sees(cid, seed):
    rec = scan_record(cid, seed, 384)
    w, m = rec["world"].double(), rec["mask"]
    assert m.any() and rec["label"] == cid
    # the returned cloud is the world points turned about +z and normalised (our own centroid and radius)
    q = w @ rotz(rec["rotation"]).T
    c = q.mean(0); s = (q - c).norm(dim=-1).max()
    torch.testing.assert_close(rec["points"].double(), (q - c) / s, atol=2e-6, rtol=0)
    # the scanned object is the object of make_shape(cid, seed), turned by its yaw
    obj, _ = rooms.make_object(cid, np.random.default_rng(seed), (0.0, 0.0), rec["box"]["yaw"], 1)
    assert [p for p in rec["scene"].primitives if p.instance_id == 1] == obj
    others = [p for p in rec["scene"].primitives if p.instance_id != 1]
    # object points lie on the object's surface, background points on something else
    d_obj = union_sdf(w, obj)
    assert d_obj[m].abs().max().item() < 1e-3
    assert d_obj[~m].min().item() > -1e-4 if (~m).any() else True        # never inside the object
    if (~m).any():
        assert (d_obj[~m] > 1e-3).float().mean().item() > 0.99
        assert union_sdf(w[~m], others).abs().max().item() < 1e-3
    # everything was seen by the camera: nothing in between (sphere tracing through the whole scene) ...
    V = rec["viewmat"].double()
    eye = torch.linalg.inv(V)[:3, 3]
    vis = visible_from(eye, w, rec["scene"].primitives)
    assert vis.float().mean().item() > 0.98, vis.float().mean()
    # ... the object's points are on the side facing the camera ...
    n = sdf_normal(w[m], obj)
    facing = ((n * (eye - w[m])).sum(-1) > 0).float().mean().item()
    assert facing > 0.97, facing
    # ... and come from one depth image: they project onto pixel centres of that camera
    uv, z = project(w.float(), rec["K"], rec["viewmat"])
    assert (z > 0).all() and (uv >= 0).all() and (uv <= rec["resolution"]).all()
    torch.testing.assert_close(uv - uv.floor(), torch.full_like(uv, 0.5), atol=2e-2, rtol=0)
    # every point is inside the perturbed crop box
    b = rec["box"]
    local = (w - torch.tensor(b["center"])) @ rotz(b["yaw"])
    assert (local.abs() <= torch.tensor(b["half"]) + 1e-5).all()


def test_unperturbed_box_is_the_objects_bounding_box():
    cid, seed = 5, 4
    rec = scan_record(cid, seed, 256, enlarge=1.0, max_translate=0.0, scale_range=(1.0, 1.0))
    yaw, b = rec["box"]["yaw"], rec["box"]
    w = shape_record(cid, seed, 4096)["world"].double() @ rotz(yaw).T     # the clean surface, turned like the scan
    local = (w - torch.tensor(b["center"])) @ rotz(yaw)
    half = torch.tensor(b["half"])
    assert (local.abs() <= half + 1e-4).all()                             # contains the object ...
    top_gap, bottom_gap = half - local.max(0).values, local.min(0).values + half
    assert top_gap.max().item() < 0.01 and bottom_gap[:2].max().item() < 0.01   # ... tightly on five faces,
    assert abs(bottom_gap[2].item() - 0.05) < 1e-3                              # and the bottom 5 cm under the floor


def test_scan_deterministic_and_seed_dependent():
    a, b = make_scan(3, 203, 512), class_scan(3)                          # the same (class, seed) twice
    assert torch.equal(a[0], b["points"]) and torch.equal(a[2], b["mask"]) and a[1] == b["label"] == 3
    assert not torch.allclose(a[0], make_scan(3, 204, 512)[0])


def test_scan_topped_up_when_few_points():
    rec = scan_record(10, 3, 4096, resolution=48)                          # a low-resolution scan has < 4096 points
    assert rec["n_cropped"] < 4096 and rec["points"].shape == (4096, 3)
    assert len(torch.unique(rec["world"], dim=0)) == rec["n_cropped"]     # every cropped point used, then duplicates


# ---------------------------------------------------------------- splits and sets

def test_splits_disjoint_deterministic_balanced():
    n = 7
    items = {s: split_items(s, n) for s in ("train", "val", "test")}
    for s, it in items.items():
        assert it == split_items(s, n) and len(it) == n * N_CLASSES and len(set(it)) == len(it)
        assert [sum(c == k for c, _ in it) for k in range(N_CLASSES)] == [n] * N_CLASSES
        assert all(SPLIT_SEED_OFFSETS[s] <= seed < SPLIT_SEED_OFFSETS[s] + N_CLASSES * CLASS_STRIDE for _, seed in it)
    seeds = {s: {seed for _, seed in it} for s, it in items.items()}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"]) and not (seeds["val"] & seeds["test"])
    big = split_items("train", 2 * n)                                      # a bigger split extends each class's list
    assert all(x in big for x in items["train"])
    shifted = split_items("val", n, base_seed=5)
    assert [(c, s - 5) for c, s in shifted] == items["val"]


def test_make_shape_set_matches_items():
    d = make_shape_set("test", 2, n_points=64)
    items = split_items("test", 2)
    assert d["points"].shape == (24, 64, 3) and d["mask"] is None and d["labels"].dtype == torch.long
    assert d["labels"].tolist() == [c for c, _ in items] and d["seeds"].tolist() == [s for _, s in items]
    for k in (0, 13, 23):
        assert torch.equal(d["points"][k], make_shape(*items[k], 64)[0])
    ds = make_shape_set("val", 1, n_points=64, variant="scan")
    assert ds["points"].shape == (12, 64, 3) and ds["mask"].shape == (12, 64) and ds["mask"].dtype == torch.bool
    p, _, m = make_scan(*split_items("val", 1)[5], 64)
    assert torch.equal(ds["points"][5], p) and torch.equal(ds["mask"][5], m)


@pytest.mark.parametrize("call,msg", [
    (lambda: make_shape(N_CLASSES, 0), "class_id"), (lambda: make_shape(-1, 0), "class_id"),
    (lambda: make_shape("chair", 0), "class_id"), (lambda: make_shape(True, 0), "class_id"),
    (lambda: make_shape(0, -1), "seed"), (lambda: make_shape(0, 0, 0), "n_points"), (lambda: make_shape(0, 0, 2.5), "n_points"),
    (lambda: make_scan(N_CLASSES, 0), "class_id"), (lambda: make_scan(0, 0, n_points=0), "n_points"),
    (lambda: make_scan(0, 0, scale_range=(0.0, 1.0)), "scale_range"), (lambda: make_scan(0, 0, resolution=4), "resolution"),
    (lambda: split_items("dev", 1), "split"), (lambda: split_items("train", 0), "n_per_class"),
    (lambda: split_items("train", CLASS_STRIDE + 1), "n_per_class"), (lambda: split_items("train", 1, base_seed=-3), "base_seed"),
    (lambda: make_shape_set("train", 1, variant="mesh"), "variant"), (lambda: make_shape_set("train", 1, n_points=0), "n_points"),
])
def test_bad_input_errors(call, msg):
    with pytest.raises(ValueError, match=msg): call()
