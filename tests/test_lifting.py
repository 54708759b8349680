"""FiT3D Stage 1 (`condense_nb.lifting`) against independent truth.

* SSIM: identity, the closed form for constant images, a brute-force per-pixel reference (explicit window sums
  with zero padding, float64), monotone in noise;
* init_from_depth: every mean reprojects to a pixel centre at that pixel's depth, with its colour; scales are the
  RMS distance to the 3 nearest neighbours (brute force);
* gradient separation: the feature loss alone gives the geometry no gradient, and the features the same gradient
  as an undetached render;
* the view-space gradient estimate against a loss that depends only on the projected pixel position;
* prune / densify: exactly the right rows, Adam moments moved with them, the optimiser still steps;
* a short lift lowers the RGB and feature losses; save/load round trip; presets;
* shard_scenes covers every scene once; a 2-process gloo run of lift_scenes.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from condense_nb.cameras import intrinsics, look_at, project, unproject
from condense_nb import scenes, rooms
from condense_nb.lifting import (FeatureGaussians, GAUSSIAN_PARAMS, LiftConfig, SSIM_C1, SSIM_C2, densify_gaussians,
                                 init_from_depth, lift_losses, lift_scene, lift_scenes, load_gaussians, make_optimizer,
                                 means_lr, prune_gaussians, save_gaussians, scene_views, shard_scenes, ssim,
                                 view_space_grad)

F64 = torch.float64




@pytest.fixture(scope="module")
def views():
    return scene_views(rooms.make_room(5, n_objects=4), 4, width=48, height=32, seed=2)


def pool_teacher(images):  # images [B, 3, H, W] -> [B, 6, H/8, W/8]: a deterministic, view-dependent "teacher"
    x = F.avg_pool2d(images, 8)
    return torch.cat([x, x.square() - 0.3, torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :3])], 1)


# ---------------------------------------------------------------- SSIM

def brute_ssim(x, y, i, j, size=11, sigma=1.5):
    "SSIM of single-channel images x, y [H, W] at pixel (i, j): explicit weighted sums, zero outside the image."
    H, W = x.shape
    r = size // 2
    g = [math.exp(-(k - r) ** 2 / (2 * sigma ** 2)) for k in range(size)]
    s = sum(g); g = [v / s for v in g]
    mx = my = xx = yy = xy = 0.0
    for a in range(size):
        for b in range(size):
            u, v = i + a - r, j + b - r
            if 0 <= u < H and 0 <= v < W:
                w = g[a] * g[b]; xv, yv = float(x[u, v]), float(y[u, v])
                mx += w * xv; my += w * yv; xx += w * xv * xv; yy += w * yv * yv; xy += w * xv * yv
    sx, sy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    return (2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2) / ((mx * mx + my * my + SSIM_C1) * (sx + sy + SSIM_C2))


def test_ssim_identity_and_constant():
    x = torch.rand(2, 3, 20, 24, dtype=F64)
    assert abs(ssim(x, x).item() - 1) < 1e-12
    a, b = 0.3, 0.9
    m = ssim(torch.full((1, 1, 24, 24), a, dtype=F64), torch.full((1, 1, 24, 24), b, dtype=F64), reduce=False)[0, 0, 5:-5, 5:-5]
    torch.testing.assert_close(m, torch.full_like(m, (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)), rtol=1e-10, atol=1e-12)


def test_ssim_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 18, dtype=F64, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, dtype=F64, generator=g)).clamp(0, 1)
    m = ssim(x, y, reduce=False)[0, 0]
    for i, j in [(0, 0), (3, 7), (8, 9), (15, 17), (10, 2)]:   # corners and borders exercise the zero padding
        assert abs(m[i, j].item() - brute_ssim(x[0, 0], y[0, 0], i, j)) < 1e-10


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g)
    n = torch.randn(x.shape, generator=g)
    vals = [ssim(x, (x + s * n).clamp(0, 1)).item() for s in (0.0, 0.01, 0.05, 0.2, 0.5)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    with pytest.raises(ValueError, match="same shape"): ssim(x, x[..., :-1])


# ---------------------------------------------------------------- initialisation

def test_init_from_depth_reprojects_to_pixel_centres(views):
    V, H, W = views["depth"].shape
    gs = init_from_depth(views["rgb"], views["depth"], views["K"], views["viewmat"], n_max=700, teacher_dim=5, low_dim=3)
    assert len(gs) == 700
    m = gs.means.detach()
    found = torch.zeros(len(m), dtype=torch.bool)
    for v in range(V):
        uv, z = project(m, views["K"][v], views["viewmat"][v])
        px = (uv - 0.5).round()
        inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (z > 0)
        on_centre = inside & ((uv - 0.5 - px).abs().max(-1).values < 1e-3)
        pu, pv = px[:, 0].long().clamp(0, W - 1), px[:, 1].long().clamp(0, H - 1)
        d = views["depth"][v][pv, pu]
        ok = on_centre & torch.isfinite(d) & ((d - z).abs() < 1e-4 * d.clamp(min=1))
        col_ok = (gs.colors.detach() - views["rgb"][v][pv, pu]).abs().max(-1).values < 1e-5
        found |= ok & col_ok
    assert found.all(), f"{int((~found).sum())} means are not on a pixel centre of any view at that pixel's depth/colour"
    D = torch.cdist(m.double(), m.double()).sort(-1).values[:, 1:4]
    torch.testing.assert_close(gs.scales.detach().double(), D.square().mean(-1).sqrt()[:, None].expand(-1, 3), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gs.opacities.detach(), torch.full((700,), 0.1))
    torch.testing.assert_close(gs.quats.detach(), torch.tensor([[1., 0, 0, 0]]).expand(700, 4))
    assert (gs.features == 0).all() and gs.decoder.weight.shape == (5, 3, 3, 3)


def test_init_from_depth_keeps_all_finite_pixels_and_skips_inf():
    K, vm = intrinsics(60, 8, 6), look_at([0., -3, 1], [0, 0, 1])
    depth = torch.full((1, 6, 8), 2.0); depth[0, 0, :3] = math.inf
    gs = init_from_depth(torch.rand(1, 6, 8, 3), depth, K[None], vm[None], n_max=1000, teacher_dim=2, low_dim=2)
    assert len(gs) == 45
    torch.testing.assert_close(gs.means.detach(), unproject(depth[0], K, vm)[torch.isfinite(depth[0])])
    with pytest.raises(ValueError, match="n_max"): init_from_depth(torch.rand(1, 6, 8, 3), depth, K[None], vm[None], n_max=2, teacher_dim=2)


# ---------------------------------------------------------------- gradient separation

def test_feature_loss_does_not_reach_geometry(views):
    gs = init_from_depth(views["rgb"], views["depth"], views["K"], views["viewmat"], n_max=300, teacher_dim=6, low_dim=4)
    with torch.no_grad(): gs.features.normal_(); gs.opacity_logits.fill_(0.0)
    target = torch.randn(6, 32, 48)
    L = lift_losses(gs, views["rgb"][1], target, views["K"][1], views["viewmat"][1])
    L["feat"].backward()
    for k in ("means", "quats", "log_scales", "opacity_logits", "sh0"):
        assert getattr(gs, k).grad is None or (getattr(gs, k).grad == 0).all(), k
    g_feat = gs.features.grad.clone()
    assert g_feat.abs().sum() > 0 and gs.decoder.weight.grad.abs().sum() > 0
    # the same loss through an undetached render: the features' gradient is the same, but the geometry now gets one
    gs.zero_grad(set_to_none=True)
    from condense_nb.gaussians import rasterize
    img, _ = rasterize(gs.means, gs.quats, gs.scales, gs.opacities, gs.features, views["viewmat"][1], views["K"][1], 48, 32)
    (gs.decode(img)[0] - target).abs().mean().backward()
    torch.testing.assert_close(gs.features.grad, g_feat)
    assert gs.means.grad.abs().sum() > 0


def test_total_loss_geometry_gradient_is_the_rgb_gradient(views):
    gs = init_from_depth(views["rgb"], views["depth"], views["K"], views["viewmat"], n_max=200, teacher_dim=6, low_dim=4)
    with torch.no_grad(): gs.features.normal_()
    args = (views["rgb"][0], torch.randn(6, 32, 48), views["K"][0], views["viewmat"][0])
    lift_losses(gs, *args)["rgb"].backward()
    g_rgb = gs.means.grad.clone(); gs.zero_grad(set_to_none=True)
    lift_losses(gs, *args, feature_weight=10.0)["loss"].backward()
    torch.testing.assert_close(gs.means.grad, g_rgb)


def test_view_space_grad_against_pixel_loss():
    K, vm = torch.tensor([[50., 0, 21], [0, 38, 14], [0, 0, 1]]), look_at([0.5, -3, 1.2], [0, 0, 0.8])   # fx != fy
    means = (torch.randn(20, 3) * 0.4 + torch.tensor([0, 0, 0.8])).requires_grad_()
    a, b = torch.randn(20), torch.randn(20)
    uv, _ = project(means, K, vm)
    (a * uv[:, 0] + b * uv[:, 1]).sum().backward()          # dL/du = a, dL/dv = b per Gaussian
    expected = torch.sqrt((a * 40 / 2) ** 2 + (b * 30 / 2) ** 2)   # NDC gradient: (W/2) dL/du, (H/2) dL/dv
    torch.testing.assert_close(view_space_grad(means.grad, means.detach(), K, vm, 40, 30), expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- prune and densify

def _gaussians(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FeatureGaussians(means=torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0., 0, 2.5]),
                            quats=torch.randn(n, 4, generator=g), log_scales=torch.full((n, 3), math.log(0.08)),
                            opacity_logits=torch.randn(n, generator=g), sh0=torch.randn(n, 3, generator=g),
                            features=torch.randn(n, 3, generator=g), teacher_dim=4)


def _step(gs, opt):
    K = intrinsics(60, 16, 16)
    L = lift_losses(gs, torch.rand(16, 16, 3), torch.randn(4, 16, 16), K, torch.eye(4))
    opt.zero_grad(); L["loss"].backward(); opt.step()


def test_prune_removes_exactly_low_opacity():
    gs = _gaussians(40)
    opt = make_optimizer(gs, LiftConfig.from_preset("tiny"), 1.0)
    _step(gs, opt)
    low = torch.zeros(40, dtype=torch.bool); low[[0, 5, 6, 17, 39]] = True
    with torch.no_grad(): gs.opacity_logits[low] = -8.0; gs.opacity_logits[~low] = gs.opacity_logits[~low].clamp(min=-3)
    before = {k: getattr(gs, k).detach().clone() for k in GAUSSIAN_PARAMS}
    moments = {k: opt.state[getattr(gs, k)]["exp_avg_sq"].clone() for k in GAUSSIAN_PARAMS}
    assert prune_gaussians(gs, opt, 0.005) == 5 and len(gs) == 35
    for k in GAUSSIAN_PARAMS:
        p = getattr(gs, k)
        assert torch.equal(p.detach(), before[k][~low]), k
        assert torch.equal(opt.state[p]["exp_avg_sq"], moments[k][~low]), k
        group = next(g for g in opt.param_groups if g["name"] == k)
        assert group["params"][0] is p and opt.state[p]["exp_avg"].shape == p.shape
    assert len(opt.state) == len(GAUSSIAN_PARAMS) + 1                       # no stale entries for the old tensors
    _step(gs, opt)                                                          # still a working optimiser
    assert all(opt.state[getattr(gs, k)]["exp_avg"].shape == getattr(gs, k).shape for k in GAUSSIAN_PARAMS)


def test_densify_clone_and_split():
    gs = _gaussians(10)
    with torch.no_grad(): gs.log_scales[:5] = math.log(0.01); gs.log_scales[5:] = math.log(0.3)
    opt = make_optimizer(gs, LiftConfig.from_preset("tiny"), 1.0)
    _step(gs, opt)
    feats, s7 = gs.features.detach().clone(), gs.scales.detach()[7].clone()
    score = torch.zeros(10); score[[1, 2, 7]] = 1.0                       # 1, 2 small -> clone; 7 large -> split
    assert densify_gaussians(gs, opt, score, 0.5, extent=1.0, percent_dense=0.1) == (2, 1)
    assert len(gs) == 10 - 1 + 2 + 2
    keep = [i for i in range(10) if i != 7]
    assert torch.equal(gs.features.detach(), torch.cat([feats[keep], feats[[1, 2]], feats[[7, 7]]]))
    torch.testing.assert_close(gs.scales.detach()[-2:], (s7 / 1.6).expand(2, 3))
    st = opt.state[gs.means]
    assert st["exp_avg"].shape == (13, 3) and (st["exp_avg"][9:] == 0).all() and (st["exp_avg_sq"][:9] != 0).any()
    _step(gs, opt)
    # the budget: at most max_gaussians after densification
    assert densify_gaussians(gs, opt, torch.ones(13), 0.5, extent=1.0, percent_dense=0.1, max_gaussians=15) in [(2, 0), (1, 1), (0, 2)]
    assert len(gs) <= 15


# ---------------------------------------------------------------- the loop, I/O, config

def test_short_lift_reduces_losses(views):
    cfg = LiftConfig.from_preset("tiny", iterations=48, n_max=600, densify_from=16, densify_until=32, densify_every=16, max_gaussians=1000)
    gs, hist = lift_scene(views, pool_teacher, cfg)
    first = lambda k: sum(hist[k][:8]) / 8
    last = lambda k: sum(hist[k][-8:]) / 8
    assert last("rgb") < 0.7 * first("rgb"), (first("rgb"), last("rgb"))
    assert last("feat") < 0.7 * first("feat"), (first("feat"), last("feat"))
    assert last("psnr") > first("psnr") + 2
    assert len(hist["step"]) == 48 and gs.teacher_dim == 9 and gs.low_dim == cfg.low_dim


def test_save_load_round_trip(tmp_path):
    gs = _gaussians(25)
    p = save_gaussians(gs, tmp_path / "s.safetensors", meta=dict(scene="x", n=3))
    gs2 = load_gaussians(p)
    assert gs2.meta == dict(scene="x", n=3) and len(gs2) == 25 and gs2.teacher_dim == 4
    for k, v in gs.state_dict().items(): assert torch.equal(gs2.state_dict()[k], v), k
    assert [f.name for f in tmp_path.iterdir()] == ["s.safetensors"]      # atomic: no temp file left
    import safetensors.torch as st
    sd = {k: v.detach() for k, v in gs.state_dict().items()}; sd.pop("sh0")
    (tmp_path / "bad.safetensors").write_bytes(st.save(sd, metadata=dict(format="condense-nb-feature-gaussians/1", teacher_dim="4")))
    with pytest.raises(ValueError, match="bad.safetensors: expected tensors"): load_gaussians(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable"): load_gaussians(tmp_path / "junk.safetensors")


def test_config_presets_and_lr_schedule():
    assert LiftConfig.from_preset("full") == LiftConfig()
    assert LiftConfig.from_preset("full").low_dim == 64 and LiftConfig().ssim_weight == 0.2
    with pytest.raises(ValueError, match="preset: unknown value 'medium'"): LiftConfig.from_preset("medium")
    with pytest.raises(ValueError, match="unknown LiftConfig field"): LiftConfig.from_preset("tiny", lr=1.0)
    cfg = LiftConfig(iterations=100, lr_means=1e-2, lr_means_final=1e-4)
    assert math.isclose(means_lr(0, cfg, 2.0), 2e-2) and math.isclose(means_lr(100, cfg, 2.0), 2e-4)
    assert math.isclose(means_lr(50, cfg, 1.0), 1e-3)                     # geometric midpoint


# ---------------------------------------------------------------- sharding, distributed

@pytest.mark.parametrize("n,ws", [(0, 2), (1, 3), (7, 2), (230, 8), (5, 5)])
def test_shard_scenes_covers_each_scene_once(n, ws):
    ids = [f"scene{i:03d}" for i in range(n)]
    parts = [shard_scenes(ids, r, ws) for r in range(ws)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank"): shard_scenes(ids, ws, ws)
    with pytest.raises(ValueError, match="duplicates"): shard_scenes(["a", "a"], 0, 1)


def _toy_views(sid):
    "A textured plane 2 m in front of two cameras (no renderer needed)."
    K = intrinsics(60, 16, 16)
    vms = torch.stack([torch.eye(4), look_at([0.3, 0, 0], [0.3, 0, 2], up=(0, -1, 0))])
    g = torch.Generator().manual_seed(int(sid[-1]))
    return dict(rgb=torch.rand(2, 16, 16, 3, generator=g), depth=torch.full((2, 16, 16), 2.0), K=K.expand(2, 3, 3), viewmat=vms)


def _gloo_worker(rank, world_size, tmp, ids):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    try:
        cfg = LiftConfig.from_preset("tiny", iterations=2, n_max=50, low_dim=2)
        lift_scenes(ids, _toy_views, pool_teacher, cfg, f"{tmp}/out")
    finally:
        dist.destroy_process_group()


def test_lift_scenes_gloo_two_processes(tmp_path):
    import torch.multiprocessing as mp
    ids = [f"s{i}" for i in range(5)]
    mp.spawn(_gloo_worker, args=(2, str(tmp_path), ids), nprocs=2, join=True)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert files == [f"{s}.safetensors" for s in ids]
    ranks = {s: load_gaussians(tmp_path / "out" / f"{s}.safetensors").meta["rank"] for s in ids}
    assert ranks == {s: i % 2 for i, s in enumerate(ids)}
    # a rerun skips finished scenes (resume): nothing is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.safetensors")}
    lift_scenes(ids, _toy_views, pool_teacher, LiftConfig.from_preset("tiny", iterations=2, n_max=50, low_dim=2), tmp_path / "out")
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
