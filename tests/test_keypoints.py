"Key points: NMS against a brute-force reference, peakiness/repeatability/consensus losses by hand, condense_scene coordinates."
import itertools
import math
import pytest
import torch
from condense_nb.cameras import intrinsics, look_at
from condense_nb.keypoints import (Detector2D, Detector3D, render_scores, keypoint_consensus_loss, peakiness_loss,
                                   repeatability_loss, nms_2d, nms_3d, condense_scene, keypoint_repeatability)


# ---------------------------------------------------------------- NMS

def brute_nms(score, radius, top_k, threshold, mask=None):
    "Reference: a location is kept iff eligible and nothing eligible within Chebyshev `radius` out-ranks it (score, then raster order)."
    shape = tuple(score.shape)
    flat = score.reshape(-1).tolist()
    elig = [s > threshold for s in flat]
    if mask is not None: elig = [e and bool(m) for e, m in zip(elig, mask.reshape(-1).tolist())]
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    def coords(f): return tuple((f // st) % n for st, n in zip(strides, shape))
    kept = []
    for f in range(len(flat)):
        if not elig[f]: continue
        c = coords(f)
        beaten = False
        for off in itertools.product(range(-radius, radius + 1), repeat=len(shape)):
            q = tuple(a + o for a, o in zip(c, off))
            if any(x < 0 or x >= n for x, n in zip(q, shape)) or q == c: continue
            g = sum(x * st for x, st in zip(q, strides))
            if elig[g] and (flat[g] > flat[f] or (flat[g] == flat[f] and g < f)):
                beaten = True; break
        if not beaten: kept.append(f)
    kept.sort(key=lambda f: (-flat[f], f))
    if top_k is not None: kept = kept[:top_k]
    return [list(coords(f)) for f in kept]


@pytest.mark.parametrize("seed", range(6))
def test_nms_2d_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    H, W = int(torch.randint(3, 14, (1,), generator=g)), int(torch.randint(3, 14, (1,), generator=g))
    heat = (torch.rand(H, W, generator=g) * 6).floor() / 6                # coarse levels: many ties and plateaus
    for radius, top_k, thr in [(0, None, 0.0), (1, None, 0.0), (2, 5, 0.1), (3, None, 0.4), (1, 1, -1.0)]:
        got = nms_2d(heat, radius=radius, top_k=top_k, threshold=thr)
        assert got.dtype == torch.long and got.shape[1] == 2
        assert got.tolist() == brute_nms(heat, radius, top_k, thr)


@pytest.mark.parametrize("seed", range(4))
def test_nms_3d_matches_brute_force_with_mask(seed):
    g = torch.Generator().manual_seed(100 + seed)
    score = (torch.rand(5, 6, 7, generator=g) * 5).floor() / 5
    mask = torch.rand(5, 6, 7, generator=g) > 0.3
    for radius, top_k, thr in [(1, None, 0.0), (2, 4, 0.0), (1, None, 0.5)]:
        got = nms_3d(score, radius=radius, top_k=top_k, threshold=thr, mask=mask)
        assert got.tolist() == brute_nms(score, radius, top_k, thr, mask)
        assert got.tolist() == brute_nms(score, radius, top_k, thr, mask) and got.shape[1] == 3


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_nms_properties(radius):
    g = torch.Generator().manual_seed(radius)
    heat = torch.rand(30, 40, generator=g)
    heat[5:12, 8:20] = 0.95                                                # a plateau
    kp, sc = nms_2d(heat, radius=radius, top_k=25, threshold=0.2, return_scores=True)
    assert 0 < len(kp) <= 25
    assert (sc[:-1] >= sc[1:]).all() and (sc > 0.2).all()                  # sorted, above threshold
    assert torch.equal(sc, heat[kp[:, 0], kp[:, 1]])
    d = (kp[:, None] - kp[None]).abs().amax(-1) + torch.eye(len(kp), dtype=torch.long) * 10 ** 6
    assert (d > radius).all()                                              # no two kept within the radius
    for r, c in kp.tolist():                                               # each is a local maximum
        win = heat[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1]
        assert heat[r, c] >= win.max()
    assert len(nms_2d(heat, radius=radius)) >= len(kp)                      # top_k only cuts


def test_nms_constant_map_and_empty():
    kp = nms_2d(torch.full((7, 7), 0.5), radius=2)
    assert kp.tolist() == brute_nms(torch.full((7, 7), 0.5), 2, None, 0.0)
    assert kp.tolist()[0] == [0, 0]                                          # raster order breaks the tie
    assert nms_2d(torch.zeros(4, 4), radius=1).shape == (0, 2)              # nothing above the threshold
    assert nms_3d(torch.ones(2, 2, 2), radius=1, mask=torch.zeros(2, 2, 2, dtype=torch.bool)).shape == (0, 3)


def test_nms_bad_inputs():
    with pytest.raises(ValueError, match="heat: expected shape"): nms_2d(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="score: expected shape"): nms_3d(torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"radius: expected a non-negative int \(an int >= 0\)"): nms_2d(torch.rand(4, 4), radius=-1)
    with pytest.raises(ValueError, match=r"radius: expected a non-negative int \(an int >= 0\)"): nms_2d(torch.rand(4, 4), radius=1.5)
    with pytest.raises(ValueError, match="top_k: expected a positive int"): nms_2d(torch.rand(4, 4), top_k=0)
    with pytest.raises(ValueError, match="heat: contains NaN"): nms_2d(torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="mask: expected a tensor of shape"): nms_3d(torch.rand(2, 3, 4), mask=torch.ones(2, 3))


# ---------------------------------------------------------------- losses

def test_peakiness_hand_cases():
    for v in (0.0, 0.3, 1.0):
        assert peakiness_loss(torch.full((2, 1, 9, 7), v)).item() == pytest.approx(1.0)
    one = torch.zeros(1, 1, 3, 3); one[..., 1, 2] = 1.0                     # a single window holding one 1
    assert peakiness_loss(one).item() == pytest.approx(1 / 9)
    m = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]])[None, None]
    # four 3x3 windows (top-left corners (0,0), (0,1), (1,0), (1,1)): max - mean = 8/9, 8/9, 8/9, 1 - 1.5/9
    want = 1 - (3 * 8 / 9 + (1 - 1.5 / 9)) / 4
    assert peakiness_loss(m).item() == pytest.approx(want)
    cube = torch.zeros(1, 1, 2, 2, 2); cube[..., 0, 1, 1] = 1.0             # 3D: one window of 8 voxels
    assert peakiness_loss(cube, window=2).item() == pytest.approx(1 / 8)


def test_peaky_map_scores_lower_than_flat_or_smooth():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 1, 32, 32), 0.4)
    peaky = torch.zeros(1, 1, 32, 32); peaky[..., 2::5, 3::5] = 1.0
    smooth = torch.nn.functional.avg_pool2d(peaky, 5, stride=1, padding=2) * 5
    noise = torch.rand(1, 1, 32, 32, generator=g) * 0.05
    lp, ls, lf = (peakiness_loss(x + noise, window=5).item() for x in (peaky, smooth, flat))
    assert lp < ls < lf


def test_peakiness_bad_inputs():
    with pytest.raises(ValueError, match="heat: expected a float tensor"): peakiness_loss(torch.rand(4, 4))
    with pytest.raises(ValueError, match="smaller than window=5"): peakiness_loss(torch.rand(1, 1, 4, 9), window=5)
    with pytest.raises(ValueError, match="window: expected an int >= 2"): peakiness_loss(torch.rand(1, 1, 4, 4), window=1)


def test_repeatability_loss_hand_cases():
    ha, hb = torch.full((6, 8), 0.2), torch.full((3, 4), 0.5)               # B's map is coarser than the images
    pix = torch.tensor([[0, 0], [5, 7], [2, 3]])
    uv = torch.tensor([[0.5, 0.5], [7.5, 5.5], [3.1, 2.9]])
    assert repeatability_loss(ha, hb, pix, uv, image_size=(6, 8)).item() == pytest.approx(0.09)
    # a ramp in u seen shifted by 1.5 px: bilinear sampling reproduces a linear map exactly
    ramp = torch.arange(10.0)[None].expand(5, 10) / 10
    shifted = ramp + 0.15                                                   # value at u is ramp(u + 1.5) = ramp(u) + 0.15
    r, c = torch.meshgrid(torch.arange(5), torch.arange(2, 7), indexing="ij")
    pix = torch.stack([r, c], -1).reshape(-1, 2)
    uv_b = torch.stack([c + 0.5 - 1.5, r + 0.5], -1).reshape(-1, 2).float()
    assert repeatability_loss(ramp, ramp, pix, uv_b).item() > 1e-3
    assert repeatability_loss(ramp, shifted, pix, uv_b).item() == pytest.approx(0.0, abs=1e-10)
    ha_g = ha.clone().requires_grad_(True)
    z = repeatability_loss(ha_g, hb, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    z.backward(); assert z.item() == 0.0
    with pytest.raises(ValueError, match="uv_b: expected shape"): repeatability_loss(ha, hb, pix, uv_b[:3])
    with pytest.raises(ValueError, match="heat_a: expected a float tensor"): repeatability_loss(torch.rand(2, 3, 4), hb, pix, uv_b)


def test_keypoint_consensus_loss_hand_cases_and_stop_grad():
    s, h = torch.tensor([0.1, 0.6, 0.9]), torch.tensor([0.3, 0.6, 0.4])
    assert keypoint_consensus_loss(s, h).item() == pytest.approx((0.04 + 0 + 0.25) / 3)
    assert keypoint_consensus_loss(s, h, valid=torch.tensor([False, True, True])).item() == pytest.approx(0.125)
    bce = -(h * torch.log(s) + (1 - h) * torch.log(1 - s)).mean()
    assert keypoint_consensus_loss(s, h, kind="bce", stop_grad="2d").item() == pytest.approx(bce.item(), rel=1e-5)
    bce_rev = -(s * torch.log(h) + (1 - s) * torch.log(1 - h)).mean()
    assert keypoint_consensus_loss(s, h, kind="bce", stop_grad="3d").item() == pytest.approx(bce_rev.item(), rel=1e-5)
    for kind, sg in [("l2", "2d"), ("l2", "3d"), ("bce", "2d"), ("bce", "3d"), ("l2", "none")]:
        sg_, hg = s.clone().requires_grad_(True), h.clone().requires_grad_(True)
        keypoint_consensus_loss(sg_, hg, kind=kind, stop_grad=sg).backward()
        g3 = sg_.grad is not None and sg_.grad.abs().sum() > 0
        g2 = hg.grad is not None and hg.grad.abs().sum() > 0
        assert (g3, g2) == {"2d": (True, False), "3d": (False, True), "none": (True, True)}[sg]
    with pytest.raises(ValueError, match="needs a fixed target"): keypoint_consensus_loss(s, h, kind="bce")
    with pytest.raises(ValueError, match="heat2d: expected scores in"): keypoint_consensus_loss(s, h + 1)
    with pytest.raises(ValueError, match="score3d, heat2d: shapes differ"): keypoint_consensus_loss(s, h[:2])


# ---------------------------------------------------------------- detectors, rendering

def test_detectors_shapes_and_range():
    torch.manual_seed(0)
    d2, d3 = Detector2D(8), Detector3D(6, hidden=None, kernel_size=1)
    h = d2(torch.randn(3, 8, 5, 7) * 10)
    assert h.shape == (3, 1, 5, 7) and (h > 0).all() and (h < 1).all()
    assert d2(torch.randn(8, 5, 7), size=(20, 28)).shape == (1, 20, 28)
    s = d3(torch.randn(2, 6, 3, 4, 5))
    assert s.shape == (2, 1, 3, 4, 5) and (s > 0).all() and (s < 1).all()
    # a 1x1x1 head is a per-voxel function of the features: same feature, same score
    f = torch.randn(6, 1, 1, 1).expand(6, 3, 4, 5)
    assert torch.allclose(d3(f), d3(f)[:, :1, :1, :1].expand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="feats: expected 8 channels"): d2(torch.randn(1, 4, 5, 7))
    with pytest.raises(ValueError, match="feats: contains NaN"): d3(torch.full((6, 2, 2, 2), float("nan")))


def test_render_scores_constant_grid():
    box = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 2.0]])
    occ = torch.zeros(8, 8, 8); occ[2, 1:-1, 1:-1] = 1.0
    K, V = intrinsics(60, 16, 12), look_at([0.2, 0.1, 3.0], [0.0, 0.0, 0.0], up=(0.0, 1.0, 0.0))
    s, ok = render_scores(torch.full((8, 8, 8), 0.37), occ[None] * 30.0, box, K, V, 16, 12, occupancy=occ, n_samples=64)
    assert ok.sum() > 10 and torch.allclose(s[ok], torch.full((int(ok.sum()),), 0.37), atol=1e-5)
    assert (s[~ok] == 0).all()
    with pytest.raises(ValueError, match="score: expected a tensor"): render_scores(torch.rand(2, 8, 8, 8), occ[None], box, K, V, 16, 12)


def test_keypoint_repeatability_hand_case():
    kp_a = torch.tensor([[1, 1], [4, 4], [7, 0]])
    kp_b = torch.tensor([[1, 3], [9, 9]])
    pix = torch.tensor([[1, 1], [4, 4]])                                     # (7, 0) has no correspondence
    uv = torch.tensor([[3.5, 1.5], [20.0, 20.0]])                            # (1,1) lands on B's (1,3) centre; (4,4) far away
    assert keypoint_repeatability(kp_a, kp_b, pix, uv, tol=1.0) == pytest.approx(1 / 3)
    assert keypoint_repeatability(kp_a, kp_b, pix, uv, tol=20.0) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- condense_scene

def test_condense_scene_world_coordinates_by_hand():
    aabb = torch.tensor([[-1.0, 2.0, 0.5], [3.0, 3.5, 1.7]])
    D, H, W = 3, 5, 8                                                        # voxels 0.5 (x) x 0.3 (y) x 0.4 (z)
    score = torch.zeros(D, H, W)
    peaks = {(2, 4, 7): 0.9, (0, 0, 0): 0.8, (1, 2, 3): 0.7, (0, 4, 1): 0.6}
    for k, v in peaks.items(): score[k] = v
    score[1, 2, 4] = 0.65                                                    # next to (1, 2, 3): suppressed at radius 1
    F_s = torch.randn(5, D, H, W)
    out = condense_scene(F_s, score, aabb, top_k=10, radius=1)
    want_idx = [[2, 4, 7], [0, 0, 0], [1, 2, 3], [0, 4, 1]]
    assert out["index"].tolist() == want_idx
    want_xyz = torch.tensor([[-1.0 + (i + 0.5) * 0.5, 2.0 + (j + 0.5) * 0.3, 0.5 + (k + 0.5) * 0.4] for k, j, i in want_idx])
    assert torch.allclose(out["xyz"], want_xyz, atol=1e-6)
    assert torch.allclose(out["features"], torch.stack([F_s[:, k, j, i] for k, j, i in want_idx]))
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.8, 0.7, 0.6]))
    assert condense_scene(F_s, score[None], aabb, top_k=2, radius=1)["index"].tolist() == want_idx[:2]   # [1, D, H, W] too


def test_condense_scene_only_occupied_voxels():
    g = torch.Generator().manual_seed(3)
    D, H, W = 6, 7, 8
    score = torch.rand(D, H, W, generator=g)
    occ = (torch.rand(D, H, W, generator=g) > 0.6).float()
    score[occ == 0] += 1.0                                                   # empty voxels score highest: must be ignored
    out = condense_scene(torch.randn(4, D, H, W), score, torch.tensor([[0.0, 0, 0], [1, 1, 1]]), top_k=50, radius=1, occupancy=occ)
    idx = out["index"]
    assert len(idx) > 3 and (occ[idx[:, 0], idx[:, 1], idx[:, 2]] > 0).all()
    assert idx.tolist() == brute_nms(score, 1, 50, 0.0, occ > 0)            # empty voxels do not suppress either


def test_condense_scene_bad_inputs():
    aabb = torch.tensor([[0.0, 0, 0], [1, 1, 1]])
    F_s, score = torch.randn(3, 2, 3, 4), torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match="score: expected the feature grid's spatial shape"): condense_scene(F_s, torch.rand(2, 3, 5), aabb)
    with pytest.raises(ValueError, match="occupancy: expected shape"): condense_scene(F_s, score, aabb, occupancy=torch.ones(2, 3))
    with pytest.raises(ValueError, match="F_s: expected a feature grid"): condense_scene(torch.randn(2, 3, 4), score, aabb)
    with pytest.raises(ValueError, match="aabb: expected max > min"): condense_scene(F_s, score, torch.tensor([[0.0, 0, 0], [1, 0, 1]]))
    with pytest.raises(ValueError, match="top_k: expected a positive int"): condense_scene(F_s, score, aabb, top_k=0)
    with pytest.raises(ValueError, match="score: contains NaN"): condense_scene(F_s, torch.full((2, 3, 4), float("nan")), aabb)
