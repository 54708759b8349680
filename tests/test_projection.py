"""Tests for condense_nb.projection: the official sum splatting against a literal loop transcription of
I2P-MAE's `proj2img`, the z-buffer against a brute-force nearest-surface loop, the read-back against the
official upsample-then-gather, view permutations, pixel bounds and bad input."""
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from condense_nb.projection import (project_views, fit_views, points_to_pixels, read_back, average_views,
                                    depth_buffer, visible_in_views, view_coords, axis3_rotations, ring_rotations,
                                    ZBUFFER_FAR_LEVEL)


def _cloud(seed, n=30, scale=(1.0, 0.6, 0.8)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, n, 3, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor(scale, dtype=torch.float64)


def _official_loop(pc: np.ndarray, S: int):
    """Literal per-point transcription of I2P-MAE `proj2img` (sum over a 5x5 splat, ±1 nudge, sigmoid) for one view.
    pc [N, 3] with the view's (row, col, depth) coordinates. Returns image [S, S] and each point's I2P pixel [N, 2]."""
    N = len(pc)
    rng = pc.max(0) - pc.min(0)
    grid = max(rng[0], rng[1]) / (S - 3)
    mn = pc.min(0)[:2]
    idx = np.floor((pc[:, :2] - mn) / grid)
    offs = [(a, b) for a in range(-2, 3) for b in range(-2, 3)]
    dense = [(idx[n] + np.array(o) + 1, pc[n, 2]) for n in range(N) for o in offs]
    allidx = np.array([d[0] for d in dense])
    centre = np.floor((allidx.max(0) + allidx.min(0)) / 2)
    off = S / 2 - centre - 1
    img = np.zeros((S, S))
    for ij, z in dense:
        r, c = ij + off
        r, c = (r + 1 if r < 0 else r - 1 if r > S - 1 else r), (c + 1 if c < 0 else c - 1 if c > S - 1 else c)
        assert 0 <= r <= S - 1 and 0 <= c <= S - 1
        img[int(r), int(c)] += z
    return 1 / (1 + np.exp(-img)), idx + 1 + off


@pytest.mark.parametrize("seed,S", [(0, 16), (1, 24), (2, 32)])
def test_sum_mode_equals_official_loop(seed, S):
    pts = _cloud(seed)
    images, pix = project_views(pts, S, mode="sum", splat=2)
    assert images.shape == (1, 3, 3, S, S) and pix.shape == (1, 3, 30, 2)
    p = pts[0].numpy()
    for v, perm in enumerate([[0, 1, 2], [2, 0, 1], [1, 2, 0]]):    # v1=(x,y,z), v2=(z,x,y), v3=(y,z,x)
        img, px = _official_loop(p[:, perm], S)
        np.testing.assert_allclose(images[0, v, 0].numpy(), img, atol=1e-12)
        for c in range(3): assert torch.equal(images[0, v, c], images[0, v, 0])
        np.testing.assert_array_equal(pix[0, v].numpy(), px)


def _zbuffer_loop(pix: np.ndarray, z: np.ndarray, S: int, s: int) -> np.ndarray:
    "Nearest depth per pixel: max depth over every clamped splat cell of every point (-inf where none)."
    buf = np.full((S, S), -np.inf)
    for (r, c), d in zip(pix, z):
        for a in range(-s, s + 1):
            for b in range(-s, s + 1):
                rr, cc = min(max(r + a, 0), S - 1), min(max(c + b, 0), S - 1)
                buf[rr, cc] = max(buf[rr, cc], d)
    return buf


@pytest.mark.parametrize("splat", [0, 1, 2])
def test_zbuffer_round_trip(splat):
    pts = _cloud(3, n=60)
    S = 20
    images, pix, prm = project_views(pts, S, mode="zbuffer", splat=splat, return_params=True)
    q = view_coords(pts, prm.rot)[0]                                         # [V, N, 3]
    n_vis = n_occ = 0
    for v in range(3):
        z = q[v, :, 2].numpy()
        near, far = z.max(), z.min()
        buf = _zbuffer_loop(pix[0, v].numpy(), z, S, splat)
        np.testing.assert_allclose(depth_buffer(pts, prm, splat)[0, v].numpy(), buf)
        gray = np.where(np.isfinite(buf), ZBUFFER_FAR_LEVEL + (1 - ZBUFFER_FAR_LEVEL) * (buf - far) / (near - far), 0.0)
        np.testing.assert_allclose(images[0, v, 0].numpy(), gray, atol=1e-12)
        # read the image back at every point's own pixel
        back = read_back(images[:, v:v + 1, :1], pix[:, v:v + 1], S)[0, :, 0, 0].numpy()
        own = ZBUFFER_FAR_LEVEL + (1 - ZBUFFER_FAR_LEVEL) * (z - far) / (near - far)
        r, c = pix[0, v, :, 0].numpy(), pix[0, v, :, 1].numpy()
        cover = (np.abs(r[:, None] - r[None]) <= splat) & (np.abs(c[:, None] - c[None]) <= splat)   # j's splat covers i's pixel
        front = np.array([z[cover[i]].max() for i in range(len(z))])          # brute-force nearest depth at i's pixel
        visible = front <= z
        np.testing.assert_allclose(back[visible], own[visible], atol=1e-9)    # visible: reads its own depth
        assert (back[~visible] > own[~visible] + 1e-9).all()                  # occluded: reads a nearer depth
        n_vis, n_occ = n_vis + visible.sum(), n_occ + (~visible).sum()
    assert n_vis > 0 and n_occ > 0                                            # both cases really happened


def test_zbuffer_invariant_to_duplicated_points_sum_is_not():
    pts = _cloud(4, n=200)
    dup = torch.cat([pts, pts], 1)
    assert torch.equal(project_views(pts, 32, mode="zbuffer")[0], project_views(dup, 32, mode="zbuffer")[0])
    assert not torch.allclose(project_views(pts, 32, mode="sum")[0], project_views(dup, 32, mode="sum")[0])


@pytest.mark.parametrize("scale", [(1, 1, 1), (1, 0.05, 0.3), (0.01, 2, 0.5), (3, 3, 0)])
@pytest.mark.parametrize("S", [8, 64, 224])
def test_pixels_inside_and_centred(scale, S):
    pts = _cloud(5, n=500, scale=scale).float() + torch.tensor([10.0, -3.0, 2.0])
    images, pix = project_views(pts, S)
    assert pix.dtype == torch.long and pix.min() >= 1 and pix.max() <= S - 2     # official: points in [1, S-2]
    for v in range(3):
        ext = (pix[0, v].amax(0) - pix[0, v].amin(0))
        long_ax = int(ext.argmax())
        assert pix[0, v, :, long_ax].min() == 1 and pix[0, v, :, long_ax].max() in (S - 3, S - 2)
        # splat bounding box centred on S/2 - 1 (the official (111, 111) for 224)
        lo, hi = pix[0, v].amin(0) - 2, pix[0, v].amax(0) + 2
        assert (torch.div(lo + hi, 2, rounding_mode="floor") == S // 2 - 1).all()
    assert 0 <= images.min() and images.max() <= 1


def test_views_permute_coordinates():
    pts = _cloud(6, n=100).float()
    img, pix = project_views(pts, 32)
    for v, perm in enumerate([[0, 1, 2], [2, 0, 1], [1, 2, 0]]):
        img_p, pix_p = project_views(pts[..., perm], 32)
        assert torch.equal(pix[:, v], pix_p[:, 0]) and torch.allclose(img[:, v], img_p[:, 0])
    R = axis3_rotations()
    p = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(R @ p, torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.3, 0.1]]))


def test_ring_views_upright_and_not_mirrored():
    R = ring_rotations(4, 0.0)
    # viewer at +x looking toward -x with z up: rows = -z, columns = +y (viewer's right), depth = +x
    assert torch.allclose(R[0], torch.tensor([[0., 0, -1], [0, 1, 0], [1, 0, 0]]), atol=1e-7)
    # viewer at +y: right hand is -x
    assert torch.allclose(R[1], torch.tensor([[0., 0, -1], [-1, 0, 0], [0, 1, 0]]), atol=1e-7)
    Re = ring_rotations(3, 30.0)
    assert torch.allclose(torch.linalg.det(Re), torch.ones(3), atol=1e-6)
    assert torch.allclose(Re[:, 2, 2], torch.full((3,), math.sin(math.radians(30))), atol=1e-6)   # looks down
    img, pix = project_views(_cloud(7, 200).float(), 32, views=5, mode="zbuffer")
    assert img.shape == (1, 5, 3, 32, 32) and pix.shape == (1, 5, 200, 2)


def test_points_to_pixels_matches_projection_for_subsets():
    pts = _cloud(8, n=300).float()
    _, pix, prm = project_views(pts, 64, return_params=True)
    sub = [3, 17, 250]
    assert torch.equal(points_to_pixels(pts[:, sub], prm), pix[:, :, sub])


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_read_back_equals_upsample_then_gather(mode):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 4, 7, 7, generator=g, dtype=torch.float64)
    S = 56
    pix = torch.randint(0, S, (2, 3, 40, 2), generator=g)
    pix[0, 0, :4] = torch.tensor([[0, 0], [S - 1, S - 1], [0, S - 1], [S - 1, 0]])   # corners
    out = read_back(maps, pix, S, mode=mode)
    assert out.shape == (2, 40, 3, 4)
    up = F.interpolate(maps.flatten(0, 1), size=(S, S), mode=mode, align_corners=False).view(2, 3, 4, S, S)
    for b in range(2):
        for v in range(3):
            ref = up[b, v][:, pix[b, v, :, 0], pix[b, v, :, 1]].T                 # [N, C]
            torch.testing.assert_close(out[b, :, v], ref, atol=1e-10, rtol=0)
    # a full-resolution map is read exactly
    full = torch.randn(1, 1, 2, S, S, generator=g, dtype=torch.float64)
    torch.testing.assert_close(read_back(full, pix[:1, :1], S)[0, :, 0], full[0, 0][:, pix[0, 0, :, 0], pix[0, 0, :, 1]].T)


def test_average_views():
    vals = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).view(2, 4, 3, 2)
    torch.testing.assert_close(average_views(vals), vals.mean(2))
    w = torch.zeros(2, 4, 3); w[..., 1] = 1
    torch.testing.assert_close(average_views(vals, w), vals[:, :, 1])
    w[0, 0] = 0                                                                       # no weight: plain mean
    torch.testing.assert_close(average_views(vals, w)[0, 0], vals[0, 0].mean(0))
    with pytest.raises(ValueError, match="weights"): average_views(vals, -w - 1)


def test_visibility_two_planes():
    g = torch.linspace(-1, 1, 16)
    sq = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    pts = torch.cat([torch.cat([sq, torch.full((256, 1), 0.5)], 1), torch.cat([sq, torch.full((256, 1), -0.5)], 1)])[None]
    vis = visible_in_views(pts, fit_views(pts, 48))
    assert vis[0, 0, :256].all() and not vis[0, 0, 256:].any()                       # top view: upper plane only


def test_bad_input():
    ok = _cloud(0).float()
    with pytest.raises(ValueError, match=r"points: expected shape \[B, N, 3\]"): project_views(torch.rand(10, 3))
    with pytest.raises(ValueError, match=r"points: expected shape \[B, N, 3\]"): project_views(torch.rand(1, 10, 4))
    with pytest.raises(ValueError, match=r"points: expected shape \[B, N, 3\]"): project_views(torch.rand(1, 0, 3))
    bad = ok.clone(); bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="points: contains NaN"): project_views(bad)
    bad[0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="points: contains NaN"): project_views(bad)
    for s in (4, 7, 0, 33, 64.0, True):
        with pytest.raises(ValueError, match="size: expected an (even )?int >= 8"): project_views(ok, size=s)
    with pytest.raises(ValueError, match="mode"): project_views(ok, mode="min")
    with pytest.raises(ValueError, match="splat"): project_views(ok, splat=1.5)
    with pytest.raises(ValueError, match="zero extent"): project_views(torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="views"): project_views(ok, views=0)
    with pytest.raises(ValueError, match="views"): project_views(ok, views=torch.ones(2, 3, 3))
    _, pix, prm = project_views(ok, 16, return_params=True)
    with pytest.raises(ValueError, match="batch size"): points_to_pixels(torch.cat([ok, ok]), prm)
    with pytest.raises(ValueError, match="pix: pixels must lie"): read_back(torch.rand(1, 3, 2, 4, 4), pix, 8)
    with pytest.raises(ValueError, match="maps"): read_back(torch.rand(3, 2, 4, 4), pix, 16)
    with pytest.raises(ValueError, match="image_size"): read_back(torch.rand(1, 3, 2, 4, 4), pix, 0)
