"Ray marcher against analytic cases, hand trilinear interpolation, brute force and gradcheck."
import math
import pytest
import torch
import torch.nn.functional as F
from condense_nb.raymarch import (ray_aabb, stratified_samples, sample_grid, sample_grid_reference, volume_render,
                                  importance_samples, fuse_occupancy, render_rays)

AABB = torch.tensor([[-1.0, -2.0, 0.0], [2.0, 1.0, 1.5]], dtype=torch.float64)


@pytest.mark.parametrize("sigma,L,S", [(0.3, 1.0, 8), (2.0, 3.0, 64), (10.0, 0.5, 5)])
def test_constant_density_opacity_and_feature(sigma, L, S):
    ts, te = stratified_samples(torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.5 + L, dtype=torch.float64), S,
                                perturb=True, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0.2, -1.0, 3.0], dtype=torch.float64)
    r = volume_render(torch.full_like(ts, sigma), c.expand(4, S, 3), ts, te)
    assert torch.allclose(r["opacity"], torch.full((4,), 1 - math.exp(-sigma * L), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r["values"], c * r["opacity"][:, None], atol=1e-12)


def test_depth_of_constant_density_matches_integral():
    # expected depth of constant density on [a, b] is the integral of t * sigma * exp(-sigma (t - a)) dt;
    # the midpoint rule converges to it as intervals shrink
    a, b, s = 1.0, 3.0, 1.5
    ts, te = stratified_samples(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), 4000, perturb=False)
    r = volume_render(torch.full_like(ts, s), torch.ones(1, 4000, 1, dtype=torch.float64), ts, te)
    L = b - a
    exact = a * (1 - math.exp(-s * L)) + (1 - math.exp(-s * L) * (1 + s * L)) / s
    assert abs(r["depth"].item() - exact) < 1e-3


def test_thin_slab_depth():
    ts, te = stratified_samples(torch.zeros(1), torch.full((1,), 4.0), 800, perturb=False)
    sig = ((ts >= 2.5) & (te <= 2.51)).float() * 1e5
    r = volume_render(sig, torch.ones(1, 800, 1), ts, te)
    assert abs(r["depth"].item() - 2.5025) < 5e-3 and abs(r["opacity"].item() - 1) < 1e-5
    assert abs(r["weights"].sum().item() - r["opacity"].item()) < 1e-6


def test_sample_grid_hand_trilinear_and_voxel_centres():
    grid = torch.randn(2, 3, 4, 5, dtype=torch.float64)  # D=3 (z), H=4 (y), W=5 (x)
    ext = AABB[1] - AABB[0]
    vox = ext / torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64)
    # voxel centres return stored values
    for (k, j, i) in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        p = AABB[0] + (torch.tensor([i, j, k], dtype=torch.float64) + 0.5) * vox
        assert torch.allclose(sample_grid(grid, AABB, p[None])[0], grid[:, k, j, i])
    # a point between 8 centres: hand trilinear with explicit weights
    fx, fy, fz = 0.25, 0.6, 0.9
    p = AABB[0] + (torch.tensor([1 + 0.5 + fx, 2 + 0.5 + fy, 0 + 0.5 + fz], dtype=torch.float64)) * vox
    want = sum(grid[:, 0 + dz, 2 + dy, 1 + dx] * (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * (fz if dz else 1 - fz)
               for dx in (0, 1) for dy in (0, 1) for dz in (0, 1))
    assert torch.allclose(sample_grid(grid, AABB, p[None])[0], want)
    # equals grid_sample inside, 0 outside the AABB; equals the written-out reference everywhere
    pts = AABB[0] - 0.2 * ext + torch.rand(800, 3, dtype=torch.float64) * 1.4 * ext
    inside = ((pts >= AABB[0]) & (pts <= AABB[1])).all(-1)
    g = (pts - AABB[0]) / ext * 2 - 1
    gs = F.grid_sample(grid[None], g[None, :, None, None], align_corners=False, padding_mode="zeros")[0, :, :, 0, 0].T
    out = sample_grid(grid, AABB, pts)
    assert torch.allclose(out[inside], gs[inside]) and (out[~inside] == 0).all()
    assert torch.allclose(out, sample_grid_reference(grid, AABB, pts))


def test_gradcheck_volume_render():
    g = torch.Generator().manual_seed(0)
    ts, te = stratified_samples(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 5, generator=g)
    sig = (torch.rand(3, 5, dtype=torch.float64) * 3).requires_grad_()
    val = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    f = lambda s, v: tuple(volume_render(s, v, ts, te)[k] for k in ("values", "opacity", "depth", "weights"))
    assert torch.autograd.gradcheck(f, (sig, val))


def test_gradcheck_sample_grid():
    grid = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    pts = (AABB[0] + torch.rand(6, 3, dtype=torch.float64) * (AABB[1] - AABB[0]) * 0.9 + 0.05 * (AABB[1] - AABB[0])).requires_grad_()
    assert torch.autograd.gradcheck(lambda gr, p: sample_grid(gr, AABB, p), (grid, pts))


def test_ray_aabb_cases_and_brute_force():
    box = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    # axis aligned
    tn, tf, hit = ray_aabb(torch.tensor([[-5.0, 0.5, -0.5]]), torch.tensor([[1.0, 0, 0]]), box)
    assert hit.item() and abs(tn.item() - 4) < 1e-6 and abs(tf.item() - 6) < 1e-6
    # inside: t_near clamped at 0, t_far the exit
    tn, tf, hit = ray_aabb(torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([[-1.0, 0, 0]]), box)
    assert hit.item() and tn.item() == 0 and abs(tf.item() - 1.5) < 1e-6
    # grazing: touches the edge (x=-1, y=1) at a single point -> no length inside -> no hit
    tn, tf, hit = ray_aabb(torch.tensor([[-3.0, -1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), box)
    assert not hit.item() and tn.item() == tf.item() == 2.0
    # parallel to a slab, outside it; box behind the origin
    assert not ray_aabb(torch.tensor([[-3.0, 1.5, 0.0]]), torch.tensor([[1.0, 0, 0]]), box)[2].item()
    assert not ray_aabb(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[1.0, 0, 0]]), box)[2].item()
    # random rays against brute force: dense points along the ray inside the box
    g = torch.Generator().manual_seed(1)
    o = (torch.rand(300, 3, generator=g) * 6 - 3).double()
    d = F.normalize(torch.randn(300, 3, generator=g), dim=-1).double()
    tn, tf, hit = ray_aabb(o, d, box.double())
    t = torch.linspace(0, 10, 20001, dtype=torch.float64)
    pts = o[:, None] + d[:, None] * t[None, :, None]
    ins = ((pts >= -1) & (pts <= 1)).all(-1)
    any_in = ins.any(-1)
    assert ((hit == any_in) | ((tf - tn).abs() < 1e-3)).all()
    first = torch.where(any_in, t[ins.float().argmax(-1)], torch.zeros(300, dtype=torch.float64))
    assert ((tn - first).abs()[hit & any_in] < 1e-3).all()


def test_importance_samples_follow_weights():
    ts, te = stratified_samples(torch.zeros(1), torch.ones(1), 10, perturb=False)
    w = torch.zeros(1, 10); w[0, 6] = 1.0
    a, b = importance_samples(ts, te, w, 64, generator=torch.Generator().manual_seed(0))
    mids = (a + b) / 2
    assert ((mids >= 0.6) & (mids <= 0.7)).float().mean() > 0.9
    assert (b >= a).all()


def test_occupancy_skipping_does_not_change_the_render():
    torch.manual_seed(0)
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    pts = torch.rand(300, 3) * 0.5
    occ = fuse_occupancy(pts, aabb, 16, dilate=1)
    dens = occ[None] * 30.0
    feat = torch.randn(4, 16, 16, 16)
    o = torch.tensor([[-3.0, 0.2, 0.2]]).expand(50, 3) + torch.randn(50, 3) * 0.1
    d = F.normalize(torch.tensor([[1.0, 0.0, 0.0]]) + torch.randn(50, 3) * 0.05, dim=-1)
    full = render_rays(feat, dens, aabb, o, d, n_samples=96)
    skip = render_rays(feat, dens, aabb, o, d, n_samples=96, occupancy=occ)
    assert skip["n_evaluated"] < full["n_evaluated"]
    assert torch.allclose(full["values"], skip["values"], atol=1e-5) and torch.allclose(full["depth"], skip["depth"], atol=1e-5)


def test_detach_density_stops_geometry_gradient():
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    feat = torch.randn(3, 8, 8, 8, requires_grad=True)
    dens = (torch.rand(1, 8, 8, 8) * 5).requires_grad_()
    o, d = torch.tensor([[-3.0, 0.1, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    render_rays(feat, dens, aabb, o, d, n_samples=32, detach_density=True)["values"].sum().backward()
    assert dens.grad is None and feat.grad.abs().sum() > 0


@pytest.mark.parametrize("fn,msg", [
    (lambda: ray_aabb(torch.zeros(2, 3), torch.ones(3, 3), AABB), "shapes differ"),
    (lambda: ray_aabb(torch.tensor([[0.0, float("nan"), 0]]), torch.ones(1, 3), AABB), "origins: contains NaN"),
    (lambda: ray_aabb(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[0.0, 0, 0], [1, 0, 1]])), "aabb: expected max > min"),
    (lambda: sample_grid(torch.zeros(0, 2, 2, 2), AABB, torch.zeros(1, 3)), "zero channels"),
    (lambda: sample_grid(torch.zeros(2, 2, 2), AABB, torch.zeros(1, 3)), "grid: expected"),
    (lambda: volume_render(torch.ones(2, 3), torch.ones(2, 4, 1), torch.zeros(2, 3), torch.ones(2, 3)), "values: expected shape"),
    (lambda: volume_render(-torch.ones(2, 3), torch.ones(2, 3, 1), torch.zeros(2, 3), torch.ones(2, 3)), "sigmas"),
])
def test_bad_input(fn, msg):
    with pytest.raises(ValueError, match=msg):
        fn()


def test_volume_render_weights_match_nerfacc():
    nerfacc = pytest.importorskip("nerfacc", reason="nerfacc not installed (pip install nerfacc)")
    from nerfacc.volrend import render_weight_from_density
    g = torch.Generator().manual_seed(3)
    ts, te = stratified_samples(torch.rand(50, generator=g), 2 + torch.rand(50, generator=g), 40, generator=g)
    sig = torch.rand(50, 40, generator=g) * 4
    w_ref, trans_ref, alpha_ref = render_weight_from_density(ts, te, sig)
    out = volume_render(sig, torch.ones(50, 40, 1), ts, te)
    assert torch.allclose(out["weights"], w_ref, atol=1e-6)
    assert torch.allclose(out["opacity"], w_ref.sum(-1), atol=1e-6)
