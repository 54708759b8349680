"3D encoder: voxelisation against brute force and hand-computed voxels, RGB-D fusion against the room's true surface, UNet shapes/gradients."
import math
from collections import Counter
import pytest
import torch
import torch.nn.functional as F
from condense_nb.encoder3d import (voxel_index, voxel_centers, voxelize_points, voxel_labels, fuse_rgbd, scene_aabb, iou,
                                   InputHead, UNet3D, Encoder3D, SegHead3D, ClsHead3D)
from condense_nb.raymarch import fuse_occupancy
from condense_nb.scenes import render, sample_points
from condense_nb.rooms import make_room
from condense_nb.cameras import intrinsics, inroom_path, look_at

AABB = torch.tensor([[-1.0, -2.0, 0.5], [2.0, 1.0, 1.5]], dtype=torch.float64)
RES = (3, 4, 5)  # D (z), H (y), W (x)


def _brute_voxel(p, aabb, res):
    "Voxel (k, j, i) of a point by a per-axis loop, or None outside."
    D, H, W = res
    out = []
    for ax, n in zip(range(3), (W, H, D)):
        lo, hi = float(aabb[0, ax]), float(aabb[1, ax])
        x = float(p[ax])
        if not (lo <= x < hi): return None
        step = (hi - lo) / n
        v = int((x - lo) // step)
        if v >= n: return None
        out.append(v)
    i, j, k = out
    return k, j, i


def _random_cloud(n, g, aabb=AABB, spill=0.2):
    ext = aabb[1] - aabb[0]
    return aabb[0] - spill * ext + torch.rand(n, 3, generator=g, dtype=torch.float64) * ext * (1 + 2 * spill)


def test_voxelize_points_matches_python_loop_average():
    g = torch.Generator().manual_seed(0)
    pts = _random_cloud(300, g)
    feats = torch.randn(300, 4, generator=g, dtype=torch.float64)
    grid, count = voxelize_points(pts, feats, AABB, RES)
    assert grid.shape == (5, *RES) and count.shape == RES and grid.dtype == torch.float64
    sums, cnt = {}, Counter()
    for p, f in zip(pts, feats):
        v = _brute_voxel(p, AABB, RES)
        if v is None: continue
        sums[v] = sums.get(v, torch.zeros(4, dtype=torch.float64)) + f
        cnt[v] += 1
    assert 0 < sum(cnt.values()) < 300                                # some inside, some outside
    for k in range(RES[0]):
        for j in range(RES[1]):
            for i in range(RES[2]):
                v = (k, j, i)
                assert count[v].item() == cnt[v]
                if cnt[v]:
                    assert torch.allclose(grid[:4, k, j, i], sums[v] / cnt[v], atol=1e-12)
                    assert grid[4, k, j, i].item() == 1.0
                else:
                    assert grid[:, k, j, i].abs().sum().item() == 0.0


def test_point_lands_in_hand_computed_voxel():
    # voxel sizes: x 3/5 = 0.6, y 3/4 = 0.75, z 1/3; voxel (k=2, j=1, i=3) has centre
    # x = -1 + 3.5*0.6 = 1.1, y = -2 + 1.5*0.75 = -0.875, z = 0.5 + 2.5/3
    centre = torch.tensor([1.1, -0.875, 0.5 + 2.5 / 3], dtype=torch.float64)
    assert torch.allclose(voxel_centers(AABB, RES)[2, 1, 3], centre, atol=1e-12)
    p = centre + torch.tensor([0.29, -0.37, 0.16], dtype=torch.float64)   # still inside that voxel
    grid, count = voxelize_points(p[None], torch.tensor([[7.0]], dtype=torch.float64), AABB, RES)
    assert count.sum() == 1 and count[2, 1, 3] == 1 and grid[0, 2, 1, 3] == 7.0 and grid[1, 2, 1, 3] == 1.0
    flat, inside = voxel_index(p[None], AABB, RES)
    assert inside.item() and flat.item() == (2 * 4 + 1) * 5 + 3
    # the min corner is in voxel 0; the max corner (a max face) is in none, as in raymarch.fuse_occupancy
    _, count = voxelize_points(AABB.clone(), torch.ones(2, 1, dtype=torch.float64), AABB, RES)
    assert count[0, 0, 0] == 1 and count.sum() == 1


def test_occupancy_channel_equals_raymarch_fuse_occupancy():
    g = torch.Generator().manual_seed(1)
    pts = _random_cloud(500, g).float()
    grid, _ = voxelize_points(pts, torch.zeros(500, 2), AABB.float(), (6, 7, 9))
    assert torch.equal(grid[2], fuse_occupancy(pts, AABB.float(), (6, 7, 9), dilate=0))


def test_voxelize_points_gradcheck():
    g = torch.Generator().manual_seed(2)
    pts = _random_cloud(40, g, spill=0.0)
    feats = torch.randn(40, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: voxelize_points(pts, f, AABB, (2, 2, 2))[0], (feats,))


def test_voxel_labels_majority_hand_case_and_brute_force():
    box = torch.tensor([[0.0, 0, 0], [1, 1, 1]])
    pts = torch.tensor([[0.1, 0.1, 0.1]] * 6 + [[0.9, 0.9, 0.9]] * 4 + [[0.1, 0.9, 0.1]] * 2 + [[0.9, 0.1, 0.1]])
    sem = torch.tensor([2, 5, 5, 2, 5, 255, 9, 1, 9, 1, -1, 255, 255])
    lab = voxel_labels(pts, sem, box, 2)
    assert lab[0, 0, 0] == 5          # 5 ×3 beats 2 ×2; the ignore label does not vote
    assert lab[1, 1, 1] == 1          # tie 9 vs 1 -> smallest id
    assert lab[0, 1, 0] == 255        # only unlabelled points (-1 and ignore) -> ignore
    assert lab[0, 0, 1] == 255        # only an ignore point
    assert (lab != 255).sum() == 2
    other = voxel_labels(pts, sem, box, 2, ignore=-7)   # now 255 is an ordinary class and empty voxels get -7
    assert other[0, 0, 1] == 255 and other[0, 0, 0] == 5 and other[1, 0, 0] == -7


def test_voxel_labels_brute_force():
    g = torch.Generator().manual_seed(3)
    pts = _random_cloud(400, g)
    sem = torch.randint(0, 4, (400,), generator=g)
    lab = voxel_labels(pts, sem, AABB, RES)
    votes = {}
    for p, s in zip(pts, sem.tolist()):
        v = _brute_voxel(p, AABB, RES)
        if v is not None: votes.setdefault(v, Counter())[s] += 1
    for k in range(RES[0]):
        for j in range(RES[1]):
            for i in range(RES[2]):
                c = votes.get((k, j, i))
                want = 255 if not c else min(c, key=lambda s: (-c[s], s))
                assert lab[k, j, i].item() == want


def test_scene_aabb_contains_the_room():
    room = make_room(seed=5, n_objects=3)
    pc = sample_points(room, 5000, seed=1)
    for src in (room, room.meta):
        box = scene_aabb(src)
        assert ((pc["points"] >= box[0]) & (pc["points"] < box[1])).all()
        W, D = room.meta["size"]
        assert torch.allclose(box, torch.tensor([[-W / 2 - 0.05, -D / 2 - 0.05, -0.05], [W / 2 + 0.05, D / 2 + 0.05, room.meta["height"] + 0.05]]))
    with pytest.raises(ValueError, match="room_meta"): scene_aabb({"height": 2.0})


# ---------------------------------------------------------------- RGB-D fusion

def test_fuse_rgbd_single_pixel_hand_case():
    # a 1x1 camera at the origin looking along +x; its only pixel sees depth 1.3 -> world point (1.3, 0, 0)
    K = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])
    V = look_at([0.0, 0, 0], [1.0, 0, 0])
    box = torch.tensor([[-2.0, -2, -2], [2, 2, 2]])
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 1, 1, 3)
    g = fuse_rgbd(rgb, torch.tensor([[[1.3]]]), K[None], V[None], box, 4)     # 1 m voxels
    assert g.shape == (4, 4, 4, 4)
    # (1.3, 0, 0) -> i = floor(3.3) = 3, j = floor(2.0) = 2, k = 2
    assert g[3].sum() == 1 and g[3, 2, 2, 3] == 1
    assert torch.allclose(g[:3, 2, 2, 3], torch.tensor([0.2, 0.4, 0.6]))
    # nothing hit (inf) or invalid depth (<= 0): no surface
    for bad in (math.inf, 0.0, -1.0):
        assert fuse_rgbd(rgb, torch.tensor([[[bad]]]), K[None], V[None], box, 4)[3].sum() == 0
    # free space: the segment from the camera (voxel (2,2,2)) to just short of the hit is free, the hit voxel is not
    g = fuse_rgbd(rgb, torch.tensor([[[1.9]]]), K[None], V[None], box, 8, free_space=True)   # 0.5 m voxels
    assert g.shape == (5, 8, 8, 8)
    assert g[3, 4, 4, 7] == 1 and g[4, 4, 4, 7] == 0          # surface at x = 1.9: voxel i = 7
    assert g[4, 4, 4, 4] == 1 and g[4, 4, 4, 5] == 1          # x in [0, 1): carved
    assert g[4].sum() == g[4, 4, 4].sum() and g[4, :, :, :4].sum() == 0   # nothing else, nothing behind the camera


@pytest.fixture(scope="module")
def fused_room():
    room = make_room(seed=7, n_objects=5)
    box = scene_aabb(room)
    W, D = room.meta["size"]
    Vs = torch.cat([inroom_path(room.meta["size"], 6, seed=1),
                    torch.stack([look_at([0.3 * W, -0.3 * D, 5.0], [0.0, 0, 0]), look_at([-0.3 * W, 0.3 * D, 5.0], [0.0, 0, 0])])])
    K = intrinsics(75, 48, 36)
    outs = [render(room, K, V, 48, 36, shadows=False) for V in Vs]
    rgbs, depths = torch.stack([o["rgb"] for o in outs]), torch.stack([o["depth"] for o in outs])
    res = (12, 24, 24)
    grid = fuse_rgbd(rgbs, depths, K.expand(len(Vs), 3, 3), Vs, box, res, free_space=True)
    pc = sample_points(room, 60000, seed=0)
    _, count = voxelize_points(pc["points"], pc["colors"], box, res)
    return grid, count > 0


def test_fused_rgbd_occupancy_matches_room_surface(fused_room):
    grid, occ_true = fused_room
    occ = grid[3] > 0
    assert torch.isfinite(grid).all() and set(grid[3].unique().tolist()) <= {0.0, 1.0}
    recall = (occ & occ_true).sum() / occ_true.sum()
    assert recall > 0.85, recall                              # surfaces no frame sees (under furniture) may be missed
    near = F.max_pool3d(occ_true.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    far = occ & ~near                                         # occupied yet more than one voxel from any true surface
    assert far.sum() <= 0.005 * occ.sum(), int(far.sum())
    assert iou(occ, occ_true) > 0.75
    # colours are in [0, 1] where occupied and 0 elsewhere
    assert (grid[:3][:, ~occ] == 0).all() and grid[:3].min() >= 0 and grid[:3].max() <= 1


def test_fused_free_space_avoids_surfaces(fused_room):
    grid, occ_true = fused_room
    free = grid[4] > 0
    assert not (free & (grid[3] > 0)).any()
    assert free.sum() > 0.5 * (~occ_true).sum()               # most of the room's empty volume is seen
    assert (free & occ_true).sum() <= 0.01 * free.sum(), int((free & occ_true).sum())


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize("size", [(16, 16, 16), (5, 7, 9), (1, 1, 1), (3, 12, 6), (17, 8, 2)])
@pytest.mark.parametrize("up,norm", [("transpose", "group"), ("trilinear", "batch")])
def test_unet3d_output_shape(size, up, norm):
    net = UNet3D(3, 6, widths=(4, 8, 16), norm=norm, up=up)
    assert net(torch.randn(2, 3, *size)).shape == (2, 6, *size)
    if norm == "batch": net.eval()                                 # BatchNorm cannot train on one value per channel
    assert net(torch.randn(3, *size)).shape == (6, *size)           # unbatched


def test_unet3d_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNet3D(2, 5, widths=(4, 8, 16, 16))
    x = torch.randn(2, 2, 7, 10, 9)
    (net(x) * torch.randn(2, 5, 7, 10, 9)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_unet3d_coarse_path_widens_the_receptive_field():
    # the full-resolution layers alone (stem + last fuse block: four 3x3x3 convs) reach 4 voxels; a change in one
    # corner voxel must still move the output 6 voxels away, which only the stride-2 levels can carry
    torch.manual_seed(0)
    net = UNet3D(1, 2, widths=(4, 8, 8)).eval()
    x = torch.zeros(1, 1, 8, 8, 8)
    y0 = net(x); x[0, 0, 0, 0, 0] = 1.0
    diff = (net(x) - y0).abs().sum(1)[0]
    assert diff[0, 0, 0] > 0 and diff[6, 6, 6] > 0


def test_encoder_shapes_determinism_and_shared_backbone():
    torch.manual_seed(0)
    enc = Encoder3D(input_types=("points", "rgbd"), in_channels={"points": 7, "rgbd": 5}, width=8, out_dim=12, widths=(8, 16)).eval()
    gp, gr = torch.rand(7, 6, 10, 10), torch.rand(2, 5, 6, 10, 10)
    a, b = enc(gp, "points"), enc(gp, "points")
    assert a.shape == (12, 6, 10, 10) and torch.equal(a, b)
    assert enc(gr, "rgbd").shape == (2, 12, 6, 10, 10)
    assert set(enc.heads) == {"points", "rgbd"} and isinstance(enc.backbone, UNet3D)
    # BatchNorm and dropout heads are deterministic in eval mode too
    enc_bn = Encoder3D(in_channels=4, width=8, out_dim=6, widths=(8, 16), norm="batch")
    enc_bn(torch.rand(2, 4, 4, 4, 4), "rgbd")                       # a training step updates running stats
    enc_bn.eval()
    x = torch.rand(4, 5, 6, 7)
    assert torch.equal(enc_bn(x, "points"), enc_bn(x, "points"))
    cls = ClsHead3D(12, 3).eval()
    assert torch.equal(cls(a), cls(a))


def test_heads():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 3, 4, 5)
    assert SegHead3D(6, 11)(feats).shape == (2, 11, 3, 4, 5)
    assert SegHead3D(6, 11, hidden=8)(feats[0]).shape == (11, 3, 4, 5)
    cls = ClsHead3D(6, 4, hidden=16).eval()
    mask = torch.zeros(2, 3, 4, 5, dtype=torch.bool); mask[0, 1, 2, 3] = True; mask[1, :, 0] = True
    out = cls(feats, mask)
    # reference: pool by hand over the masked voxels only
    ref = []
    for b in range(2):
        v = feats[b][:, mask[b]]                                       # [C, n]
        ref.append(torch.cat([v.amax(1), v.mean(1)]))
    assert torch.allclose(out, cls.mlp(torch.stack(ref)), atol=1e-6)
    assert out.shape == (2, 4)
    assert torch.allclose(cls(feats), cls.mlp(torch.cat([feats.flatten(2).amax(-1), feats.flatten(2).mean(-1)], 1)), atol=1e-6)


# ---------------------------------------------------------------- bad input

def test_bad_input_errors():
    pts, f = torch.rand(10, 3), torch.rand(10, 2)
    box = torch.tensor([[0.0, 0, 0], [1, 1, 1]])
    nanpts = pts.clone(); nanpts[3, 1] = math.nan
    with pytest.raises(ValueError, match="points: contains NaN"): voxelize_points(nanpts, f, box, 4)
    with pytest.raises(ValueError, match=r"points: expected shape \[\*, 3\]"): voxelize_points(torch.rand(10, 2), f, box, 4)
    with pytest.raises(ValueError, match=r"features: expected shape \[10, \*\]"): voxelize_points(pts, f[:5], box, 4)
    with pytest.raises(ValueError, match="aabb: expected max > min"): voxelize_points(pts, f, torch.tensor([[0.0, 0, 0], [1, 0, 1]]), 4)
    with pytest.raises(ValueError, match="aabb: expected max > min"): voxelize_points(pts, f, box.flip(0), 4)
    with pytest.raises(ValueError, match=r"aabb: expected shape \[2, 3\]"): voxelize_points(pts, f, torch.rand(3, 3), 4)
    for bad in (0, (4, 0, 4), (4, 4), -2, (2.5, 4, 4), "8"):
        with pytest.raises(ValueError, match="resolution"): voxelize_points(pts, f, box, bad)
    with pytest.raises(ValueError, match="resolution"): voxel_labels(pts, torch.zeros(10), box, (0, 1, 1))
    with pytest.raises(ValueError, match=r"semantic: expected shape \[10\]"): voxel_labels(pts, torch.zeros(9), box, 2)
    K, V = intrinsics(60, 4, 3), look_at([0.0, 0, 0], [1.0, 0, 0])
    rgb, dep = torch.rand(1, 3, 4, 3), torch.ones(1, 3, 4)
    nd = dep.clone(); nd[0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="depths: contains NaN"): fuse_rgbd(rgb, nd, K[None], V[None], box, 4)
    with pytest.raises(ValueError, match=r"rgbs: expected shape \[1, 3, 4, 3\]"): fuse_rgbd(rgb[:, :2], dep, K[None], V[None], box, 4)
    with pytest.raises(ValueError, match=r"Ks: expected shape"): fuse_rgbd(rgb, dep, K, V[None], box, 4)
    with pytest.raises(ValueError, match=r"viewmats: expected shape"): fuse_rgbd(rgb, dep, K[None], V[None, :3], box, 4)
    with pytest.raises(ValueError, match="carve_samples"): fuse_rgbd(rgb, dep, K[None], V[None], box, 4, free_space=True, carve_samples=0)
    net = UNet3D(3, 4, widths=(4, 8))
    with pytest.raises(ValueError, match="grid: expected 3 channels, got 2"): net(torch.rand(2, 4, 4, 4))
    with pytest.raises(ValueError, match="grid: expected a float tensor"): net(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="grid: contains NaN"): net(torch.full((3, 2, 2, 2), math.nan))
    with pytest.raises(ValueError, match="widths"): UNet3D(3, 4, widths=())
    with pytest.raises(ValueError, match="up: unknown value"): UNet3D(3, 4, up="nearest")
    enc = Encoder3D(width=4, out_dim=4, widths=(4, 8))
    with pytest.raises(ValueError, match="input_type: unknown value 'mesh'"): enc(torch.rand(4, 2, 2, 2), "mesh")
    with pytest.raises(ValueError, match="in_channels"): Encoder3D(input_types=("points", "nerf"))   # no default for 'nerf'
    with pytest.raises(ValueError, match="mask: expected shape"): ClsHead3D(4, 2)(torch.rand(1, 4, 2, 2, 2), torch.ones(1, 2, 2, 3))
    with pytest.raises(ValueError, match="kernel_size"): InputHead(3, 4, kernel_size=2)
