"""The Gaussian rasterizer against independent truth.

* closed-form footprints of single Gaussians (on the optical axis, off axis with the Jacobian written out by hand);
* hand-computed compositing of two Gaussians in both depth orders, the 0.999 clamp and early termination;
* a brute-force dense reference written here (every Gaussian at every pixel, rotation by Rodrigues' formula,
  the EWA Jacobian by autograd, a sequential front-to-back loop) against the tiled implementation;
* `torch.autograd.gradcheck` in float64, FiT3D's detached-geometry gradients, bad input, empty scenes;
* parity with gsplat on CUDA (skipped without CUDA and gsplat).
"""
import importlib.util
import math

import pytest
import torch

from condense_nb.cameras import intrinsics, look_at
from condense_nb.gaussians import rasterize, rasterize_tiles, tile_bins, project_gaussians, covariance_3d, conic, splat_extent

F64 = torch.float64
A_MIN, A_MAX, T_MIN = 1 / 255, 0.999, 1e-4
ID_Q = [1.0, 0.0, 0.0, 0.0]


def hand_K(fx=40.0, fy=36.0, cx=15.0, cy=11.0):
    return torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=F64)


def pixel_centres(W, H):
    v, u = torch.meshgrid(torch.arange(H, dtype=F64) + 0.5, torch.arange(W, dtype=F64) + 0.5, indexing="ij")
    return u, v


def analytic_alpha(cov2d, mean2d, o, W, H):
    "α of one splat at every pixel centre from an explicit 2×2 covariance: o·exp(-½ dᵀΣ⁻¹d), clamped and thresholded."
    (p, q), (_, r) = cov2d
    det = p * r - q * q
    u, v = pixel_centres(W, H)
    dx, dy = u - mean2d[0], v - mean2d[1]
    m = (r * dx * dx - 2 * q * dx * dy + p * dy * dy) / det
    a = (o * torch.exp(-0.5 * m)).clamp(max=A_MAX)
    return torch.where(a >= A_MIN, a, torch.zeros_like(a))


def one(means, scales, o, colors, quats=None):
    n = len(means)
    return (torch.tensor(means, dtype=F64), torch.tensor(quats or [ID_Q] * n, dtype=F64), torch.tensor(scales, dtype=F64),
            torch.tensor(o, dtype=F64), torch.tensor(colors, dtype=F64))


# ---------------------------------------------------------------- single Gaussians in closed form

@pytest.mark.parametrize("sigma,z,o", [(0.05, 2.0, 0.8), (0.02, 1.5, 0.4), (0.3, 5.0, 0.95)])
def test_isotropic_on_axis_footprint(sigma, z, o):
    W, H, K = 30, 22, hand_K()
    fx, fy = K[0, 0].item(), K[1, 1].item()
    g = one([[0.0, 0.0, z]], [[sigma] * 3], [o], [[1.0]])
    img, alpha = rasterize(*g, torch.eye(4, dtype=F64), K, W, H, background=torch.tensor([0.25], dtype=F64), backend="torch")
    # Σ2D = diag(σ²fx²/z², σ²fy²/z²) + 0.3 I, centred on the principal point
    cov = [[sigma**2 * fx**2 / z**2 + 0.3, 0.0], [0.0, sigma**2 * fy**2 / z**2 + 0.3]]
    a = analytic_alpha(cov, (15.0, 11.0), o, W, H)
    assert (a == 0).any() and a.max() > 0.2                     # the footprint is cut at 1/255 inside the image
    torch.testing.assert_close(alpha, a, atol=1e-10, rtol=0)
    torch.testing.assert_close(img[..., 0], a + (1 - a) * 0.25, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mean,scales", [([0.4, -0.3, 2.0], [0.05, 0.05, 0.05]),      # isotropic, off axis
                                         ([-0.5, 0.35, 1.6], [0.03, 0.06, 0.12])])     # axis-aligned ellipsoid
def test_off_axis_footprint_from_hand_jacobian(mean, scales):
    W, H, K = 30, 22, hand_K()
    fx, fy, cx, cy = 40.0, 36.0, 15.0, 11.0
    x, y, z = mean
    sx, sy, sz = scales
    # J = [[fx/z, 0, -fx x/z²], [0, fy/z, -fy y/z²]],  Σ = diag(sx², sy², sz²): J Σ Jᵀ written out
    c00 = fx**2 * sx**2 / z**2 + fx**2 * x**2 * sz**2 / z**4 + 0.3
    c01 = fx * fy * x * y * sz**2 / z**4
    c11 = fy**2 * sy**2 / z**2 + fy**2 * y**2 * sz**2 / z**4 + 0.3
    a = analytic_alpha([[c00, c01], [c01, c11]], (fx * x / z + cx, fy * y / z + cy), 0.7, W, H)
    assert a.max() > 0.2 and (a == 0).any()
    _, alpha = rasterize(*one([mean], [scales], [0.7], [[1.0, 0.0]]), torch.eye(4, dtype=F64), K, W, H, backend="torch")
    torch.testing.assert_close(alpha, a, atol=1e-10, rtol=0)


def test_quaternion_is_normalised_and_rotates():
    # a thin needle along x, turned 90° about the camera's z axis, becomes a needle along y
    W, H, K = 30, 22, hand_K()
    s = [[0.3, 0.01, 0.01]]
    c = math.cos(math.pi / 4)
    _, a_x = rasterize(*one([[0.0, 0.0, 3.0]], s, [0.9], [[1.0]]), torch.eye(4, dtype=F64), K, W, H, backend="torch")
    _, a_y = rasterize(*one([[0.0, 0.0, 3.0]], s, [0.9], [[1.0]], quats=[[5 * c, 0, 0, 5 * c]]), torch.eye(4, dtype=F64), K, W, H, backend="torch")
    assert (a_x > 0.05).sum(1).max() > 3 * (a_x > 0.05).sum(0).max()        # wide along u
    assert (a_y > 0.05).sum(0).max() > 3 * (a_y > 0.05).sum(1).max()        # tall along v
    fx, fy = 40.0, 36.0
    cov = [[0.01**2 * fx**2 / 9 + 0.3, 0.0], [0.0, 0.3**2 * fy**2 / 9 + 0.3]]
    torch.testing.assert_close(a_y, analytic_alpha(cov, (15.0, 11.0), 0.9, W, H), atol=1e-10, rtol=0)


def test_near_plane_and_behind_camera_are_dropped():
    W, H, K = 16, 12, hand_K(20, 20, 8, 6)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    for z in (0.005, 0.01, -1.0):
        img, alpha = rasterize(*one([[0.0, 0.0, z]], [[0.001] * 3], [0.9], [[1.0, 1.0, 1.0]]), torch.eye(4, dtype=F64), K, W, H, background=bg, backend="torch")
        assert (alpha == 0).all() and torch.equal(img, bg.expand(H, W, 3))
    _, alpha = rasterize(*one([[0.0, 0.0, 0.02]], [[0.001] * 3], [0.9], [[1.0, 1.0, 1.0]]), torch.eye(4, dtype=F64), K, W, H, backend="torch")
    assert alpha.max() > 0.5                                              # just in front of the near plane: kept


# ---------------------------------------------------------------- compositing by hand

def test_two_gaussians_composite_in_depth_order():
    W, H, K = 30, 22, hand_K()
    fx, fy = 40.0, 36.0
    red, blue, bg = torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor([0, 0, 1.0], dtype=F64), torch.tensor([0, 1.0, 0], dtype=F64)
    sa, sb, oa, ob = 0.08, 0.15, 0.7, 0.6

    def expected(za, zb):
        aa = analytic_alpha([[sa**2 * fx**2 / za**2 + .3, 0], [0, sa**2 * fy**2 / za**2 + .3]], (15.0, 11.0), oa, W, H)
        ab = analytic_alpha([[sb**2 * fx**2 / zb**2 + .3, 0], [0, sb**2 * fy**2 / zb**2 + .3]], (15.0, 11.0), ob, W, H)
        (a1, c1), (a2, c2) = ((aa, red), (ab, blue)) if za < zb else ((ab, blue), (aa, red))
        T1 = 1 - a1
        return (a1[..., None] * c1 + (T1 * a2)[..., None] * c2 + (T1 * (1 - a2))[..., None] * bg,
                1 - T1 * (1 - a2))

    for za, zb in ((2.0, 3.0), (3.0, 2.0)):
        g = one([[0.0, 0.0, za], [0.0, 0.0, zb]], [[sa] * 3, [sb] * 3], [oa, ob], [red.tolist(), blue.tolist()])
        img, alpha = rasterize(*g, torch.eye(4, dtype=F64), K, W, H, background=bg, backend="torch")
        e_img, e_alpha = expected(za, zb)
        torch.testing.assert_close(img, e_img, atol=1e-10, rtol=0)
        torch.testing.assert_close(alpha, e_alpha, atol=1e-10, rtol=0)
        centre = img[11, 15]
        assert (centre[0] > centre[2]) == (za < zb)                 # the front one dominates the centre pixel
        # the order of the Gaussians in the input does not matter, only their depth
        img_rev, _ = rasterize(*[t.flip(0) for t in g], torch.eye(4, dtype=F64), K, W, H, background=bg, backend="torch")
        torch.testing.assert_close(img_rev, img, atol=1e-12, rtol=0)


def test_alpha_clamped_at_0999():
    W, H, K = 8, 6, hand_K(20, 20, 4, 3)
    _, alpha = rasterize(*one([[0.0, 0.0, 2.0]], [[50.0] * 3], [1.0], [[1.0]]), torch.eye(4, dtype=F64), K, W, H, backend="torch")
    torch.testing.assert_close(alpha, torch.full((H, W), 0.999, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("o,n,n_used", [(0.95, 4, 3),       # T: .05, .0025, 1.25e-4, then 6.25e-6 <= 1e-4: the 4th is not composited
                                        (0.995, 3, 1),      # T: .005, then 2.5e-5: only the first
                                        (0.9, 3, 3)])       # T: .1, .01, .001: all three
def test_transmittance_termination(o, n, n_used):
    W, H, K = 8, 6, hand_K(20, 20, 4, 3)
    cols = torch.eye(5, dtype=F64)[:n]                          # Gaussian i paints channel i ...
    bg = torch.eye(5, dtype=F64)[4]                             # ... and the background channel 4
    g = one([[0.0, 0.0, 2.0 + i] for i in range(n)], [[200.0] * 3] * n, [o] * n, cols.tolist())
    img, alpha = rasterize(*g, torch.eye(4, dtype=F64), K, W, H, background=bg, backend="torch")
    # hand computation with the exact α of each (huge) splat at each pixel
    T = torch.ones(H, W, dtype=F64)
    exp = torch.zeros(H, W, 5, dtype=F64)
    for i in range(n_used):
        z = 2.0 + i
        a = analytic_alpha([[200.0**2 * 400 / z**2 + .3, 0], [0, 200.0**2 * 400 / z**2 + .3]], (4.0, 3.0), o, W, H)
        exp = exp + (T * a)[..., None] * cols[i]
        T = T * (1 - a)
    exp = exp + T[..., None] * bg
    torch.testing.assert_close(img, exp, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, 1 - T, atol=1e-12, rtol=0)
    if n_used < n: assert (img[..., n_used] == 0).all()        # the Gaussians behind the stop get nothing


# ---------------------------------------------------------------- brute force

def rodrigues(q):
    "Rotation of a quaternion via axis-angle and Rodrigues' formula (independent of the matrix formula used in the module)."
    q = q / q.norm()
    w, v = q[0], q[1:]
    s = v.norm()
    if s < 1e-15: return torch.eye(3, dtype=q.dtype)
    k = v / s
    th = 2 * torch.atan2(s, w)
    Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=q.dtype)
    return torch.eye(3, dtype=q.dtype) + torch.sin(th) * Kx + (1 - torch.cos(th)) * Kx @ Kx


def dense_reference(means, quats, scales, opac, colors, viewmat, K, W, H, bg):
    "Every Gaussian at every pixel, depth-sorted, composited one at a time (N×H×W work on purpose)."
    u, v = pixel_centres(W, H)
    Rv, t = viewmat[:3, :3], viewmat[:3, 3]
    proj = lambda xc: (K @ xc)[:2] / xc[2]
    splats = []
    for i in range(len(means)):
        xc = Rv @ means[i] + t
        if xc[2] <= 0.01: continue
        R = rodrigues(quats[i])
        cov_c = Rv @ R @ torch.diag(scales[i] ** 2) @ R.T @ Rv.T
        J = torch.autograd.functional.jacobian(proj, xc)                      # [2, 3]
        cov2d = J @ cov_c @ J.T + 0.3 * torch.eye(2, dtype=F64)
        splats.append((xc[2].item(), i, proj(xc), torch.linalg.inv(cov2d)))
    img = torch.zeros(H, W, colors.shape[1], dtype=F64)
    T = torch.ones(H, W, dtype=F64)
    done = torch.zeros(H, W, dtype=torch.bool)
    for _, i, m, P in sorted(splats, key=lambda s: (s[0], s[1])):
        dx, dy = u - m[0], v - m[1]
        power = 0.5 * (P[0, 0] * dx * dx + (P[0, 1] + P[1, 0]) * dx * dy + P[1, 1] * dy * dy)
        a = (opac[i] * torch.exp(-power)).clamp(max=A_MAX)
        a = torch.where(a >= A_MIN, a, torch.zeros_like(a))
        nT = T * (1 - a)
        done |= (a > 0) & (nT <= T_MIN)
        use = ~done & (a > 0)
        img += torch.where(use, T * a, torch.zeros_like(a))[..., None] * colors[i]
        T = torch.where(use, nT, T)
    return img + T[..., None] * bg, 1 - T, int(done.sum())


def random_scene(n, W, H, K, viewmat, D, seed, opac_range=(0.05, 0.95), log_scale=-2.5):
    "Random Gaussians whose means project to [-10%, 110%] of the image (inside gsplat's Jacobian clamp), a few behind."
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, 2, generator=g, dtype=F64) * torch.tensor([1.2 * W, 1.2 * H], dtype=F64) - torch.tensor([0.1 * W, 0.1 * H], dtype=F64)
    z = 1.0 + 4.0 * torch.rand(n, generator=g, dtype=F64)
    z[:3] = torch.tensor([-1.0, 0.005, 0.2], dtype=F64)                    # behind, inside the near plane, very close
    xc = torch.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], -1)
    Rv, t = viewmat[:3, :3], viewmat[:3, 3]
    means = (xc - t) @ Rv                                                   # camera -> world
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    scales = torch.exp(log_scale + 0.6 * torch.randn(n, 3, generator=g, dtype=F64))
    opac = opac_range[0] + (opac_range[1] - opac_range[0]) * torch.rand(n, generator=g, dtype=F64)
    colors = torch.rand(n, D, generator=g, dtype=F64)
    return means, quats, scales, opac, colors


@pytest.mark.parametrize("n,W,H,D,seed,opac_range,expect_stop", [
    (60, 37, 29, 3, 0, (0.05, 0.95), False),
    (150, 50, 33, 5, 1, (0.05, 0.95), False),
    (200, 40, 24, 2, 2, (0.85, 0.999), True),      # dense and opaque: many pixels terminate early
])
def test_tiled_equals_dense_reference(n, W, H, D, seed, opac_range, expect_stop):
    K = intrinsics(65, W, H).to(F64)
    viewmat = look_at([0.3, -0.4, 0.2], [0.5, 2.0, 0.6]).to(F64)
    scene = random_scene(n, W, H, K, viewmat, D, seed, opac_range)
    bg = torch.rand(D, dtype=F64, generator=torch.Generator().manual_seed(seed))
    ref_img, ref_alpha, n_stopped = dense_reference(*scene, viewmat, K, W, H, bg)
    img, alpha = rasterize(*scene, viewmat, K, W, H, background=bg, backend="torch")
    assert (n_stopped > 0) == expect_stop
    assert ref_alpha.max() > 0.9 and (ref_alpha < 0.5).any()
    torch.testing.assert_close(img, ref_img, atol=1e-9, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-9, rtol=0)
    # float32 gives the same picture up to float32 rounding (rare flips at the 1/255 threshold aside)
    img32, _ = rasterize(*[s.float() for s in scene], viewmat.float(), K.float(), W, H, background=bg.float(), backend="torch")
    err = (img32.double() - ref_img).abs()
    assert err.mean() < 1e-5 and err.max() < 1e-2


def test_tiling_and_chunking_do_not_change_the_result():
    W, H = 45, 30
    K = intrinsics(70, W, H).to(F64)
    V = torch.eye(4, dtype=F64)
    means, quats, scales, opac, colors = random_scene(120, W, H, K, V, 4, 5)
    P = project_gaussians(means, covariance_3d(quats, scales), V, K, W, H)
    ext, con = splat_extent(P.cov2d, opac), conic(P.cov2d)
    outs = []
    for ts, chunk in ((16, 2**22), (16, 1), (8, 2**22), (8, 3000), (32, 2**22)):
        bins = tile_bins(P.means2d, ext, P.depths, P.valid, W, H, tile_size=ts)
        outs.append(rasterize_tiles(P.means2d, con, opac, colors, bins, W, H, tile_size=ts, chunk_elems=chunk))
    for img, alpha in outs[1:]:
        torch.testing.assert_close(img, outs[0][0], atol=1e-12, rtol=0)
        torch.testing.assert_close(alpha, outs[0][1], atol=1e-12, rtol=0)
    # activation checkpointing (forced with checkpoint_elems=0) gives the same gradients as keeping everything
    grads = []
    for ck in (0, 2**40):
        leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        P = project_gaussians(leaves[0], covariance_3d(leaves[1], leaves[2]), V, K, W, H)
        bins = tile_bins(P.means2d, splat_extent(P.cov2d, leaves[3]), P.depths, P.valid, W, H)
        img, alpha = rasterize_tiles(P.means2d, conic(P.cov2d), leaves[3], leaves[4], bins, W, H, chunk_elems=5000, checkpoint_elems=ck)
        (img.square().sum() + alpha.sum()).backward()
        grads.append([t.grad for t in leaves])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-12, rtol=1e-10)


def test_tile_bins_lists_only_overlapping_tiles():
    # brute force: a (tile, Gaussian) pair must be listed iff some pixel centre of the tile lies in the Gaussian's box
    g = torch.Generator().manual_seed(3)
    W, H, N = 50, 35, 40
    m2 = torch.rand(N, 2, generator=g, dtype=F64) * torch.tensor([70.0, 50.0], dtype=F64) - 10
    ext = torch.rand(N, 2, generator=g, dtype=F64) * 12
    depth = torch.rand(N, generator=g, dtype=F64)
    valid = torch.rand(N, generator=g) > 0.1
    b = tile_bins(m2, ext, depth, valid, W, H, tile_size=16)
    u, v = pixel_centres(W, H)
    expected = set()
    for i in range(N):
        if not valid[i]: continue
        inside = ((u - m2[i, 0]).abs() <= ext[i, 0]) & ((v - m2[i, 1]).abs() <= ext[i, 1])
        for vv, uu in inside.nonzero().tolist(): expected.add(((vv // 16) * 4 + uu // 16, i))
    got = list(zip(b.tile_ids.tolist(), b.gauss_ids.tolist()))
    assert set(got) == expected and len(got) == len(expected)
    for t in set(b.tile_ids.tolist()):                                      # front to back inside every tile
        d = depth[b.gauss_ids[b.tile_ids == t]]
        assert (d[1:] >= d[:-1]).all()


# ---------------------------------------------------------------- gradients

def grad_scene():
    means = torch.tensor([[0.05, -0.02, 2.0], [-0.1, 0.08, 2.5], [0.12, 0.1, 3.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0.1, -0.2, 0.3], [0.9, -0.3, 0.2, 0.1], [1.0, 0.0, 0.4, -0.2]], dtype=F64)
    scales = torch.tensor([[1.0, 0.7, 0.8], [1.2, 1.0, 0.7], [1.1, 1.5, 1.0]], dtype=F64)
    opac = torch.tensor([0.6, 0.5, 0.7], dtype=F64)
    colors = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]], dtype=F64)
    return means, quats, scales, opac, colors


def test_gradcheck_float64():
    K, V = intrinsics(60, 8, 8).to(F64), torch.eye(4, dtype=F64)
    bg = torch.tensor([0.2, 0.7], dtype=F64)
    args = [t.clone().requires_grad_() for t in grad_scene()]
    # stay away from the kinks: every splat's α at every pixel in (1/255, 0.999) with margin, T far above 1e-4
    P = project_gaussians(args[0], covariance_3d(args[1], args[2]), V, K, 8, 8)
    u, v = pixel_centres(8, 8)
    a = torch.stack([analytic_alpha(P.cov2d[i].tolist(), P.means2d[i].tolist(), args[3][i].item(), 8, 8) for i in range(3)], -1)
    assert a.min() > 0.02 and a.max() < 0.9
    fn = lambda *x: rasterize(*x, V, K, 8, 8, background=bg, backend="torch")
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, fast_mode=True)
    wi, wa = torch.rand(8, 8, 2, dtype=F64), torch.rand(8, 8, dtype=F64)
    def scalar(*x):
        img, alpha = fn(*x)
        return (img * wi).sum() + (alpha * wa).sum()
    assert torch.autograd.gradcheck(scalar, args, eps=1e-6, atol=1e-6)      # full Jacobian of a random projection
    assert torch.autograd.gradcheck(lambda b: rasterize(*[t.detach() for t in args], V, K, 8, 8, background=b, backend="torch"),
                                    (bg.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_gradients_flow_in_float32_to_every_parameter():
    W, H = 24, 18
    K, V = intrinsics(60, W, H), torch.eye(4)
    args = [t.float().requires_grad_() for t in random_scene(40, W, H, K.double(), V.double(), 3, 7)]
    img, alpha = rasterize(*args, V, K, W, H, backend="torch")
    (img.square().sum() + alpha.sum()).backward()
    for a, name in zip(args, ["means", "quats", "scales", "opacities", "colors"]):
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0, name


def test_detach_geometry_reaches_colors_only():
    K, V = intrinsics(60, 8, 8).to(F64), torch.eye(4, dtype=F64)
    args = [t.clone().requires_grad_() for t in grad_scene()]
    img, alpha = rasterize(*args, V, K, 8, 8, detach_geometry=True, backend="torch")
    (img.square().sum() + img.sum()).backward()
    for a, name in zip(args[:4], ["means", "quats", "scales", "opacities"]):
        assert a.grad is None or (a.grad == 0).all(), name
    assert args[4].grad is not None and args[4].grad.abs().sum() > 0
    # the image and the colour gradient are the same as without detaching
    args2 = [t.detach().clone().requires_grad_() for t in grad_scene()]
    img2, alpha2 = rasterize(*args2, V, K, 8, 8, backend="torch")
    (img2.square().sum() + img2.sum()).backward()
    torch.testing.assert_close(img, img2.detach())
    torch.testing.assert_close(args[4].grad, args2[4].grad)
    assert args2[0].grad.abs().sum() > 0                                   # ... where the geometry does get gradient


# ---------------------------------------------------------------- bad input and empty scenes

def ok_args(n=3, D=3):
    return dict(means=torch.tensor([[0.0, 0, 2]] * n).reshape(n, 3), quats=torch.tensor([ID_Q] * n).reshape(n, 4), scales=torch.full((n, 3), 0.1),
                opacities=torch.full((n,), 0.5), colors=torch.rand(n, D), viewmat=torch.eye(4), K=intrinsics(60, 16, 12),
                width=16, height=12)


@pytest.mark.parametrize("change,msg", [
    (dict(means=torch.zeros(3, 2)), "means: expected shape"),
    (dict(quats=torch.ones(2, 4)), "quats: expected shape"),
    (dict(scales=torch.ones(3, 2)), "scales: expected shape"),
    (dict(opacities=torch.full((4,), 0.5)), "opacities: expected shape"),
    (dict(colors=torch.ones(2, 3)), "colors: expected shape"),
    (dict(viewmat=torch.eye(3)), "viewmat: expected shape"),
    (dict(K=torch.eye(4)), "K: expected shape"),
    (dict(means=torch.tensor([[0.0, float("nan"), 2]] * 3)), "means: contains NaN"),
    (dict(colors=torch.tensor([[0.0, float("inf"), 2]] * 3)), "colors: contains NaN"),
    (dict(scales=torch.tensor([[0.1, -0.1, 0.1]] * 3)), "scales: expected standard deviations >= 0"),
    (dict(opacities=torch.tensor([0.5, 1.5, 0.5])), "opacities: expected values in"),
    (dict(opacities=torch.tensor([0.5, -0.1, 0.5])), "opacities: expected values in"),
    (dict(quats=torch.zeros(3, 4)), "quats: contains a zero quaternion"),
    (dict(width=0), r"width: expected a positive int \(an int >= 1\)"),
    (dict(height=12.5), r"height: expected a positive int \(an int >= 1\)"),
    (dict(K=torch.tensor([[-10.0, 0, 8], [0, 10, 6], [0, 0, 1]])), "K: focal lengths"),
    (dict(background=torch.zeros(4)), "background: expected shape"),
    (dict(backend="cuda"), "backend: unknown value"),
])
def test_bad_input_names_the_argument(change, msg):
    kw = ok_args(); kw.update(change)
    with pytest.raises(ValueError, match=msg):
        rasterize(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gsplat_backend_needs_cuda():
    with pytest.raises(ValueError, match="backend: 'gsplat' needs CUDA"):
        rasterize(**ok_args(), backend="gsplat")


def test_empty_and_invisible_scenes_render_background():
    bg = torch.tensor([0.1, 0.5, 0.9])
    kw = ok_args(0); kw["background"] = bg
    img, alpha = rasterize(**kw)
    assert torch.equal(img, bg.expand(12, 16, 3)) and torch.equal(alpha, torch.zeros(12, 16))
    kw = ok_args(); kw["background"] = bg
    kw["means"] = torch.tensor([[0.0, 0, -2], [1, 0, -5], [0, 0, 0.01]])   # all behind or on the near plane
    img, alpha = rasterize(**kw)
    assert torch.equal(img, bg.expand(12, 16, 3)) and torch.equal(alpha, torch.zeros(12, 16))
    kw["means"] = torch.tensor([[50.0, 0, 2]] * 3)                          # all far outside the view
    img, alpha = rasterize(**kw)
    assert torch.equal(img, bg.expand(12, 16, 3)) and torch.equal(alpha, torch.zeros(12, 16))
    kw = ok_args(); kw.pop("means")
    img, alpha = rasterize(means=torch.zeros(3, 3) + torch.tensor([0, 0, 2.0]), **kw)   # no background: zeros
    assert img.shape == (12, 16, 3) and alpha.max() > 0.4


# ---------------------------------------------------------------- the gsplat path

def test_gsplat_glue_with_a_stand_in_module(monkeypatch):
    "The call into gsplat (argument shapes, batching of one camera, output squeezing) checked with a stand-in module."
    import sys, types
    from condense_nb import gaussians as G
    seen = {}

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
        seen.update(kw, viewmats=viewmats.shape, Ks=Ks.shape, dtype=means.dtype,
                    bg=None if kw["backgrounds"] is None else kw["backgrounds"].shape)
        img, alpha = rasterize(means, quats, scales, opacities, colors, viewmats[0], Ks[0], width, height,
                               background=None if kw["backgrounds"] is None else kw["backgrounds"][0], backend="torch")
        return img[None], alpha[None, ..., None], {}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    W, H = 24, 18
    K, V = intrinsics(60, W, H).to(F64), torch.eye(4, dtype=F64)
    scene = random_scene(30, W, H, K, V, 5, 4)
    bg = torch.rand(5, dtype=F64)
    img, alpha = G._rasterize_gsplat(*scene, V, K, W, H, bg)
    assert seen["viewmats"] == (1, 4, 4) and seen["Ks"] == (1, 3, 3) and seen["bg"] == (1, 5) and seen["dtype"] == torch.float32
    assert seen["near_plane"] == 0.01 and seen["eps2d"] == 0.3 and seen["render_mode"] == "RGB" and seen["rasterize_mode"] == "classic"
    assert img.shape == (H, W, 5) and alpha.shape == (H, W) and img.dtype == F64
    ref_img, ref_alpha = rasterize(*scene, V, K, W, H, background=bg, backend="torch")
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)
    img, alpha = G._rasterize_gsplat(*[t[:0] for t in scene], V, K, W, H, bg)          # no Gaussians: never calls gsplat
    assert torch.equal(img, bg.expand(H, W, 5)) and (alpha == 0).all()


# ---------------------------------------------------------------- parity with gsplat (CUDA only)

HAVE_GSPLAT = importlib.util.find_spec("gsplat") is not None


@pytest.mark.skipif(not (torch.cuda.is_available() and HAVE_GSPLAT), reason="needs CUDA and gsplat")
@pytest.mark.parametrize("D", [3, 64])
def test_gsplat_parity(D):
    W, H = 96, 64
    K = intrinsics(65, W, H).to(F64)
    V = look_at([0.3, -0.4, 0.2], [0.5, 2.0, 0.6]).to(F64)
    scene = [t.float().cuda() for t in random_scene(500, W, H, K, V, D, 11, opac_range=(0.05, 0.9))]
    Vc, Kc = V.float().cuda(), K.float().cuda()
    bg = torch.rand(D, device="cuda")
    ref = [t.clone().requires_grad_() for t in scene]
    fast = [t.clone().requires_grad_() for t in scene]
    img_t, a_t = rasterize(*ref, Vc, Kc, W, H, background=bg, backend="torch")
    img_g, a_g = rasterize(*fast, Vc, Kc, W, H, background=bg, backend="gsplat")
    # older gsplat releases cut splats at a 3σ radius instead of the exact 1/255 box: tiny differences at the rims
    for x, y in ((img_t, img_g), (a_t, a_g)):
        err = (x - y).abs()
        assert err.mean() < 1e-4 and err.max() < 2e-2, (err.mean().item(), err.max().item())
    w = torch.rand_like(img_t)
    (img_t * w).sum().backward(); (img_g * w).sum().backward()
    for a, b, name in zip(ref, fast, ["means", "quats", "scales", "opacities", "colors"]):
        cos = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert cos > 0.99, (name, cos.item())
