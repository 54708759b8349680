"Tests of condense_nb.metrics against hand-computed values, brute-force references and analytic geometry."
import math
import matplotlib
matplotlib.use("Agg")
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from condense_nb.cameras import intrinsics, look_at
from condense_nb.metrics import (SegMetric, DepthMetric, confusion_matrix, segmentation_metrics, depth_metrics,
                                 correspondences, multiview_consistency, sample_features, pca_rgb, plot_pca_views)

nan, inf = float("nan"), float("inf")


# ----------------------------------------------------------------------------- segmentation

def test_confusion_matrix_hand_computed():
    # 5 classes; 255 ignored; class 3 only predicted; class 4 nowhere
    target = torch.tensor([[0, 0, 0, 1, 1], [1, 2, 255, 255, 2]])
    pred = torch.tensor([[0, 0, 1, 1, 1], [3, 0, 2, 1, 2]])
    cm = confusion_matrix(pred, target, 5)
    expected = torch.zeros(5, 5, dtype=torch.long)
    # (t, p) pairs of the kept pixels, counted by hand
    for t, p in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 3), (2, 0), (2, 2)]: expected[t, p] += 1
    assert torch.equal(cm, expected)


def test_segmentation_metrics_hand_computed():
    target = torch.tensor([[0, 0, 0, 1, 1], [1, 2, 255, 255, 2]])
    pred = torch.tensor([[0, 0, 1, 1, 1], [3, 0, 2, 1, 2]])
    # intersections I = [2, 2, 1, 0, 0]; target counts T = [3, 3, 2, 0, 0]; pred counts P = [3, 3, 1, 1, 0]
    # IoU = [2/4, 2/4, 1/2, 0/1, nan] -> mIoU over 4 classes; Acc = [2/3, 2/3, 1/2, nan, nan]
    res = segmentation_metrics(pred, target, num_classes=5, ignore_index=255)
    assert res.keys() == {"mIoU", "mAcc", "aAcc"}
    assert res["mIoU"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.0) / 4)
    assert res["mAcc"] == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert res["aAcc"] == pytest.approx(5 / 8)
    m = SegMetric(5); m.update(pred, target)
    pc = m.per_class()
    assert torch.isnan(pc["IoU"][4]) and pc["IoU"][3] == 0                    # predicted-only class: IoU 0 counts
    assert torch.isnan(pc["Acc"][3]) and torch.isnan(pc["Acc"][4])            # ... its recall is undefined


def test_ignore_index_other_value_and_numpy_input():
    target = np.array([0, 1, 1, -1, -1])
    pred = np.array([0, 1, 0, 1, 1])
    res = segmentation_metrics(pred, target, 2, ignore_index=-1)
    # kept: (0,0), (1,1), (1,0): IoU0 = 1/2, IoU1 = 1/2, Acc0 = 1, Acc1 = 1/2
    assert res["mIoU"] == pytest.approx(0.5) and res["mAcc"] == pytest.approx(0.75) and res["aAcc"] == pytest.approx(2 / 3)


def _brute_force(preds, targets, C, ignore):
    cm = [[0] * C for _ in range(C)]
    for p, t in zip(preds.flatten().tolist(), targets.flatten().tolist()):
        if t != ignore: cm[t][p] += 1
    ious, accs = [], []
    for c in range(C):
        inter = cm[c][c]; tgt = sum(cm[c]); prd = sum(cm[i][c] for i in range(C))
        if tgt + prd - inter > 0: ious.append(inter / (tgt + prd - inter))
        if tgt > 0: accs.append(inter / tgt)
    total = sum(map(sum, cm))
    return {"mIoU": sum(ious) / len(ious), "mAcc": sum(accs) / len(accs), "aAcc": sum(cm[c][c] for c in range(C)) / total}


def test_streaming_equals_whole_split_and_brute_force():
    g = torch.Generator().manual_seed(1)
    C = 7
    preds = torch.randint(0, C, (5, 9, 11), generator=g)
    targets = torch.randint(0, C - 2, (5, 9, 11), generator=g)               # classes 5, 6 only ever predicted
    targets[torch.rand(targets.shape, generator=g) < 0.2] = 255
    preds[:2] = torch.where(targets[:2] == 255, preds[:2], targets[:2])
    ref = _brute_force(preds, targets, C, 255)
    m = SegMetric(C)
    for p, t in zip(preds, targets): m.update(p, t)
    got = m.compute()
    for k in ref: assert got[k] == pytest.approx(ref[k], abs=1e-12)
    whole = segmentation_metrics(preds, targets, C)
    for k in ref: assert whole[k] == pytest.approx(ref[k], abs=1e-12)
    # not the mean of per-image mIoUs
    per_image = np.mean([segmentation_metrics(p, t, C)["mIoU"] for p, t in zip(preds, targets)])
    assert abs(per_image - ref["mIoU"]) > 1e-3
    m.reset(); m.update(preds[0], targets[0])
    assert m.compute()["aAcc"] == pytest.approx(1.0)


def test_segmentation_errors():
    p, t = torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="num_classes"): segmentation_metrics(p, t, 0)
    with pytest.raises(ValueError, match="num_classes"): segmentation_metrics(p, t, 2.0)
    with pytest.raises(ValueError, match="same shape"): segmentation_metrics(p, t[:3], 2)
    with pytest.raises(ValueError, match="empty"): segmentation_metrics(p[:0], t[:0], 2)
    with pytest.raises(ValueError, match=r"pred: class ids must be in \[0, 2\)"): segmentation_metrics(p + 2, t, 2)
    with pytest.raises(ValueError, match="target: class ids"): segmentation_metrics(p, t - 1, 2)
    with pytest.raises(ValueError, match="pred: contains NaN"): segmentation_metrics(torch.tensor([nan, 0, 0, 0]), t, 2)
    with pytest.raises(ValueError, match="pred: expected integer"): segmentation_metrics(torch.tensor([0.5, 0, 0, 0]), t, 2)
    with pytest.raises(ValueError, match="no pixels"): segmentation_metrics(p, t + 255, 2)
    with pytest.raises(ValueError, match="ignore_index"): SegMetric(3, ignore_index="void")


# ----------------------------------------------------------------------------- depth

def test_depth_metrics_hand_computed():
    gt = torch.tensor([[[1., 2], [4, inf]],
                       [[2., 4], [5, nan]],
                       [[3., 3], [3, 3]]])
    pred = torch.tensor([[[1.5, 2], [4, 0]],
                         [[2., 2], [5, nan]],          # NaN at an invalid pixel is fine
                         [[0., 0], [0, 0]]])
    valid = torch.tensor([[[1, 1], [1, 0]], [[1, 1], [1, 0]], [[0, 0], [0, 0]]]).bool()
    res = depth_metrics(pred, gt, valid)
    # image 1: errors (0.5, 0, 0) on gt (1, 2, 4); ratios (1.5, 1, 1)
    rmse1, rel1, d1 = math.sqrt(0.25 / 3), (0.5 / 1) / 3, 2 / 3
    # image 2: errors (0, 2, 0) on gt (2, 4, 5); ratios (1, 2, 1)
    rmse2, rel2, d2 = math.sqrt(4 / 3), (2 / 4) / 3, 2 / 3
    # image 3 has no valid pixel: skipped
    assert res["rmse"] == pytest.approx((rmse1 + rmse2) / 2, rel=1e-9)
    assert res["abs_rel"] == pytest.approx((rel1 + rel2) / 2, rel=1e-9)
    assert res["delta1"] == pytest.approx((d1 + d2) / 2, rel=1e-9)
    # per image, not pooled over the split
    pooled = math.sqrt((0.25 + 4) / 6)
    assert abs(res["rmse"] - pooled) > 1e-3


def test_depth_delta_threshold_and_nonpositive_pred():
    gt = torch.full((1, 1, 4), 2.0)
    pred = torch.tensor([[[2.0 * 1.24, 2.0 / 1.24, 2.0 * 1.26, -2.0]]])   # in, in, out, negative -> out
    res = depth_metrics(pred, gt, torch.ones(1, 1, 4, dtype=torch.bool))
    assert res["delta1"] == pytest.approx(0.5)


def test_depth_streaming_and_2d_input():
    g = torch.Generator().manual_seed(0)
    gt = 1 + 4 * torch.rand(6, 5, 7, generator=g)
    pred = gt + 0.3 * torch.randn(6, 5, 7, generator=g)
    valid = torch.rand(6, 5, 7, generator=g) < 0.7
    m = DepthMetric()
    for i in range(0, 6, 4): m.update(pred[i:i + 4], gt[i:i + 4], valid[i:i + 4])
    whole = depth_metrics(pred, gt, valid)
    per = [depth_metrics(pred[i], gt[i], valid[i]) for i in range(6)]      # [H, W] input = one image
    for k in whole:
        assert m.compute()[k] == pytest.approx(whole[k], rel=1e-9)
        assert whole[k] == pytest.approx(np.mean([p[k] for p in per]), rel=1e-9)
    # brute force for one image
    v = valid[2]; e = (pred[2] - gt[2])[v].double()
    assert per[2]["rmse"] == pytest.approx(float(e.pow(2).mean().sqrt()), rel=1e-6)


def test_depth_errors():
    gt, pred, valid = torch.ones(2, 3, 3), torch.ones(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no image with a valid pixel"): depth_metrics(pred, gt, ~valid)
    with pytest.raises(ValueError, match="same shape"): depth_metrics(pred[:1], gt, valid)
    with pytest.raises(ValueError, match="valid: expected a bool mask"): depth_metrics(pred, gt, valid.long())
    with pytest.raises(ValueError, match=r"pred: expected shape \[B, H, W\]"): depth_metrics(pred[0, 0], gt[0, 0], valid[0, 0])
    bad = gt.clone(); bad[0, 0, 0] = inf
    with pytest.raises(ValueError, match="gt: valid pixels must have finite positive depth"): depth_metrics(pred, bad, valid)
    bad = gt.clone(); bad[0, 0, 0] = 0
    with pytest.raises(ValueError, match="gt: valid pixels"): depth_metrics(pred, bad, valid)
    bad = pred.clone(); bad[1, 2, 2] = nan
    with pytest.raises(ValueError, match="pred: contains NaN"): depth_metrics(bad, gt, valid)
    with pytest.raises(ValueError, match="empty"): depth_metrics(pred[:0], gt[:0], valid[:0])


# ----------------------------------------------------------------------------- analytic two-view geometry (numpy, float64)

def _rays(K, V, W, H):
    "Camera centre [3] and world ray directions [H, W, 3] through pixel centres (not normalised)."
    K, V = np.asarray(K, np.float64), np.asarray(V, np.float64)
    R, t = V[:3, :3], V[:3, 3]
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], -1)
    d_cam = pix @ np.linalg.inv(K).T
    return -R.T @ t, d_cam @ R                                     # (R^T d_cam)^T = d_cam^T R


def _project(X, K, V):
    K, V = np.asarray(K, np.float64), np.asarray(V, np.float64)
    Xc = X @ V[:3, :3].T + V[:3, 3]
    uvw = Xc @ K.T
    return uvw[..., :2] / uvw[..., 2:3], Xc[..., 2]


def _render(K, V, W, H, card=None):
    "First hit of the floor z=0 and an optional horizontal square card (x0, x1, y0, y1, height): points [H,W,3], z-depth [H,W]."
    C, d = _rays(K, V, W, H)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[..., 2] < 0, -C[2] / d[..., 2], np.inf)
        if card is not None:
            x0, x1, y0, y1, h = card
            tc = (h - C[2]) / d[..., 2]
            P = C + d * tc[..., None]
            on = (tc > 0) & (P[..., 0] >= x0) & (P[..., 0] <= x1) & (P[..., 1] >= y0) & (P[..., 1] <= y1)
            t = np.where(on & (tc < t), tc, t)
    X = C + d * np.where(np.isfinite(t), t, 0)[..., None]
    z = (X - C) @ np.asarray(V, np.float64)[2, :3]
    return X, np.where(np.isfinite(t), z, np.inf)


W, H = 48, 36
K = intrinsics(50, W, H)
V_A = look_at([1.2, -1.4, 3.0], [0.1, 0.0, 0.0])
V_B = look_at([-0.9, -1.6, 2.7], [0.0, 0.3, 0.0])


def test_correspondences_plane_match_independent_projection():
    XA, dA = _render(K, V_A, W, H)
    XB, dB = _render(K, V_B, W, H)
    assert np.isfinite(dA).all() and np.isfinite(dB).all()
    pix, uv = correspondences(torch.tensor(dA), K, V_A, torch.tensor(dB), K, V_B)
    uv_true, z_true = _project(XA, K, V_B)                               # [H, W, 2], [H, W]
    inside = (z_true > 0) & (uv_true[..., 0] >= 0) & (uv_true[..., 0] < W) & (uv_true[..., 1] >= 0) & (uv_true[..., 1] < H)
    # depth test, done independently: B's analytic depth at the pixel containing the projection
    col = np.clip(np.floor(uv_true[..., 0]).astype(int), 0, W - 1); row = np.clip(np.floor(uv_true[..., 1]).astype(int), 0, H - 1)
    expected = inside & (np.abs(z_true - dB[row, col]) < 0.02 * z_true)
    # away from float32 ties (a projection on a pixel border, or the 2 % tolerance met exactly) the sets agree
    frac = uv_true - np.floor(uv_true)
    clear = ((np.minimum(frac, 1 - frac) > 1e-3).all(-1)
             & (np.abs(np.abs(z_true - dB[row, col]) - 0.02 * z_true) > 1e-4 * z_true))
    got = np.zeros((H, W), bool); got[pix[:, 0].numpy(), pix[:, 1].numpy()] = True
    assert (got[clear] == expected[clear]).all()
    assert expected.sum() > 0.3 * H * W and not inside.all()           # the views overlap partly: a real test
    # with these non-grazing views, everything inside B passes the depth test
    assert expected[clear].sum() == inside[clear].sum()
    # the coordinates are the independent projections of the ray-plane intersections
    np.testing.assert_allclose(uv.numpy(), uv_true[pix[:, 0].numpy(), pix[:, 1].numpy()], atol=2e-3)
    assert pix.dtype == torch.long and uv.shape == pix.shape


def test_correspondences_occluder_excluded():
    card = (-0.35, 0.25, -0.3, 0.3, 0.8)
    XA, dA = _render(K, V_A, W, H, card)
    XB, dB = _render(K, V_B, W, H, card)
    pix, uv = correspondences(torch.tensor(dA), K, V_A, torch.tensor(dB), K, V_B)
    got = np.zeros((H, W), bool); got[pix[:, 0].numpy(), pix[:, 1].numpy()] = True
    # independent visibility: does the segment from B's centre to the point cross the card?
    CB, _ = _rays(K, V_B, 1, 1)
    x0, x1, y0, y1, h = card
    s = (h - CB[2]) / (XA[..., 2] - CB[2])                               # segment parameter at the card's height
    P = CB + (XA - CB) * s[..., None]
    on_card = XA[..., 2] > h / 2
    inner = (P[..., 0] > x0 + 0.05) & (P[..., 0] < x1 - 0.05) & (P[..., 1] > y0 + 0.05) & (P[..., 1] < y1 - 0.05)
    outer = (P[..., 0] < x0 - 0.05) | (P[..., 0] > x1 + 0.05) | (P[..., 1] < y0 - 0.05) | (P[..., 1] > y1 + 0.05)
    occluded = ~on_card & (s > 0) & (s < 1) & inner
    uv_true, z_true = _project(XA, K, V_B)
    inside = (z_true > 0) & (uv_true[..., 0] >= 0.01) & (uv_true[..., 0] < W - 0.01) & (uv_true[..., 1] >= 0.01) & (uv_true[..., 1] < H - 0.01)
    # points on the card itself are visible from above, except at its rim where B's nearest pixel may see past it
    card_inner = (XA[..., 0] > x0 + 0.05) & (XA[..., 0] < x1 - 0.05) & (XA[..., 1] > y0 + 0.05) & (XA[..., 1] < y1 - 0.05)
    visible = inside & ((on_card & card_inner) | (~on_card & outer))
    assert (visible & on_card).sum() >= 20
    assert (occluded & inside).sum() >= 20                               # the card really hides floor that A sees
    assert not got[occluded].any()
    assert got[visible].all()
    np.testing.assert_allclose(uv.numpy(), uv_true[pix[:, 0].numpy(), pix[:, 1].numpy()], atol=2e-3)


def test_correspondences_identity_and_behind():
    _, dA = _render(K, V_A, W, H)
    pix, uv = correspondences(dA, K, V_A, dA, K, V_A)
    assert len(pix) == H * W
    np.testing.assert_allclose(uv.numpy(), pix.flip(-1).numpy() + 0.5, atol=2e-3)
    # a camera looking away from the plane sees none of A's points (they are behind it)
    V_up = look_at([0.0, 0.0, 3.0], [0.0, 0.5, 6.0])
    pix, uv = correspondences(dA, K, V_A, np.full((H, W), 5.0), K, V_up)
    assert len(pix) == 0 and uv.shape == (0, 2)
    # pixels with no depth (inf, or 0 = missing) never correspond
    d2 = dA.copy(); d2[:, :10] = np.inf; d2[:5] = 0
    pix, _ = correspondences(d2, K, V_A, dA, K, V_A)
    assert len(pix) == (H - 5) * (W - 10) and (pix[:, 1] >= 10).all() and (pix[:, 0] >= 5).all()


def test_correspondences_errors():
    _, dA = _render(K, V_A, W, H)
    d = torch.tensor(dA)
    with pytest.raises(ValueError, match="depth_a: contains NaN"): correspondences(d * nan, K, V_A, d, K, V_B)
    with pytest.raises(ValueError, match="depth_b: negative"): correspondences(d, K, V_A, -d, K, V_B)
    with pytest.raises(ValueError, match=r"depth_b: expected shape \[\*, \*\]"): correspondences(d, K, V_A, d[None], K, V_B)
    with pytest.raises(ValueError, match="depth_a: empty"): correspondences(d[:0], K, V_A, d, K, V_B)
    with pytest.raises(ValueError, match="viewmat_b"): correspondences(d, K, V_A, d, K, V_B[:3])
    with pytest.raises(ValueError, match="K"): correspondences(d, K[:2], V_A, d, K, V_B)
    with pytest.raises(ValueError, match="rel_tol"): correspondences(d, K, V_A, d, K, V_B, rel_tol=0)


# ----------------------------------------------------------------------------- feature sampling and consistency

def test_sample_features_matches_bilinear_upsampling():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(5, 4, 6, generator=g)
    Hi, Wi = 20, 30
    up = F.interpolate(feat[None], size=(Hi, Wi), mode="bilinear", align_corners=False)[0]   # [5, Hi, Wi]
    r, c = torch.meshgrid(torch.arange(Hi), torch.arange(Wi), indexing="ij")
    uv = torch.stack([c.flatten() + 0.5, r.flatten() + 0.5], -1).float()
    s = sample_features(feat, uv, (Hi, Wi))                                                  # [Hi*Wi, 5]
    torch.testing.assert_close(s, up.flatten(1).T, atol=1e-5, rtol=1e-5)
    # a feature map at full resolution is returned exactly at pixel centres
    torch.testing.assert_close(sample_features(up, uv, (Hi, Wi)), up.flatten(1).T, atol=1e-6, rtol=1e-6)


def _fourier(X, Bm):  # X [H, W, 3] -> [2D, H, W]
    Z = X @ Bm
    return torch.tensor(np.concatenate([np.sin(Z), np.cos(Z)], -1), dtype=torch.float32).permute(2, 0, 1)


def test_consistency_perfect_for_3d_features_and_chance_for_noise():
    XA, dA = _render(K, V_A, W, H)
    XB, dB = _render(K, V_B, W, H)
    Bm = np.random.default_rng(0).normal(size=(3, 64)) * 2.0
    fa, fb = _fourier(XA, Bm), _fourier(XB, Bm)
    res = multiview_consistency(fa, fb, dA, K, V_A, dB, K, V_B, max_points=300, generator=torch.Generator().manual_seed(0))
    assert res.keys() == {"cos_sim", "corr_acc", "n"}
    assert res["cos_sim"] > 0.995
    assert res["corr_acc"] == 1.0
    assert res["n"] == len(correspondences(dA, K, V_A, dB, K, V_B)[0])
    # random features: no similarity, matches at about chance level pi r^2 / (H W) ~ 1.3 %
    g = torch.Generator().manual_seed(1)
    noise = multiview_consistency(torch.randn(64, H, W, generator=g), torch.randn(64, H, W, generator=g),
                                  dA, K, V_A, dB, K, V_B, max_points=300, generator=g)
    assert abs(noise["cos_sim"]) < 0.05 and noise["corr_acc"] < 0.08
    # features of the world shifted by 1.0 in B: smooth and distinctive, but the matches land in the wrong place
    shifted = multiview_consistency(fa, _fourier(XB + np.array([1.0, 0, 0]), Bm), dA, K, V_A, dB, K, V_B,
                                    max_points=300, generator=torch.Generator().manual_seed(0))
    assert shifted["corr_acc"] < 0.05 and shifted["cos_sim"] < 0.3


def test_consistency_low_resolution_features_and_reproducibility():
    XA, dA = _render(K, V_A, W, H)
    XB, dB = _render(K, V_B, W, H)
    Bm = np.random.default_rng(0).normal(size=(3, 64)) * 1.0
    fa, fb = F.avg_pool2d(_fourier(XA, Bm)[None], 4)[0], F.avg_pool2d(_fourier(XB, Bm)[None], 4)[0]   # 12 x 9 patch grid
    r1 = multiview_consistency(fa, fb, dA, K, V_A, dB, K, V_B, max_points=200, generator=torch.Generator().manual_seed(3))
    r2 = multiview_consistency(fa, fb, dA, K, V_A, dB, K, V_B, max_points=200, generator=torch.Generator().manual_seed(3))
    assert r1 == r2
    assert r1["cos_sim"] > 0.95 and r1["corr_acc"] > 0.9
    # mixing the patch grids of the two views up breaks it
    bad = multiview_consistency(fa.flip(-1), fb, dA, K, V_A, dB, K, V_B, max_points=200, generator=torch.Generator().manual_seed(3))
    assert bad["corr_acc"] < r1["corr_acc"] - 0.3


def test_consistency_errors():
    _, dA = _render(K, V_A, W, H)
    f = torch.randn(8, 9, 12)
    with pytest.raises(ValueError, match="same channel count"): multiview_consistency(f, f[:4], dA, K, V_A, dA, K, V_B)
    with pytest.raises(ValueError, match="feat_a: contains NaN"): multiview_consistency(f * nan, f, dA, K, V_A, dA, K, V_B)
    with pytest.raises(ValueError, match=r"feat_b: expected shape"): multiview_consistency(f, f[0], dA, K, V_A, dA, K, V_B)
    with pytest.raises(ValueError, match="max_points"): multiview_consistency(f, f, dA, K, V_A, dA, K, V_B, max_points=0)
    with pytest.raises(ValueError, match="radius"): multiview_consistency(f, f, dA, K, V_A, dA, K, V_B, radius=-1.0)
    with pytest.raises(ValueError, match="do not overlap"):
        multiview_consistency(f, f, dA, K, V_A, np.full((H, W), 5.0), K, look_at([0.0, 0.0, 3.0], [0.0, 0.5, 6.0]))


# ----------------------------------------------------------------------------- PCA pictures

def test_pca_rgb_joint_and_deterministic():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 5, 6, generator=g)
    b = a.clone()
    out = pca_rgb([a, b])
    assert out.shape == (2, 5, 6, 3) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[0], out[1])                       # same features -> same colours (joint fit)
    torch.testing.assert_close(pca_rgb(torch.stack([a, b])), out)    # tensor and list inputs agree
    torch.testing.assert_close(pca_rgb([a, b]), out)                 # deterministic
    # one direction of variation: only the first channel varies, monotonically with the coefficient
    v = torch.zeros(16); v[3], v[7] = 2.0, -1.0
    s = torch.linspace(-1, 1, 20).reshape(4, 5)
    rgb = pca_rgb(v[:, None, None] * s + 0.3)[0]
    assert (rgb[..., 1:] == 0.5).all()
    r = rgb[..., 0].flatten()
    assert (r[1:] >= r[:-1]).all() and r[0] == 0 and r[-1] == 1
    # a joint fit on a map with a wider range changes the normalisation of the first map's colours
    wide = pca_rgb([v[:, None, None] * s, 3 * v[:, None, None] * s])[0][..., 0]
    assert wide.max() < 0.9 and wide.min() > 0.1


def test_pca_rgb_errors_and_plot():
    with pytest.raises(ValueError, match="feats: empty list"): pca_rgb([])
    with pytest.raises(ValueError, match=r"feats\[1\]: expected 8 channels"): pca_rgb([torch.randn(8, 3, 3), torch.randn(4, 3, 3)])
    with pytest.raises(ValueError, match=r"feats\[0\]: contains NaN"): pca_rgb([torch.full((8, 3, 3), nan)])
    with pytest.raises(ValueError, match="feats: expected a tensor"): pca_rgb("features")
    feats = [torch.randn(8, 3, 4), torch.randn(8, 3, 4)]
    fig = plot_pca_views(feats, images=[np.zeros((12, 16, 3)), np.ones((12, 16, 3))], titles=["a", "b"])
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="images: expected 2"): plot_pca_views(feats, images=[np.zeros((12, 16, 3))])
    import matplotlib.pyplot as plt; plt.close("all")
