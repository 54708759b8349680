"Consensus/fidelity losses against hand-computed values, stop-gradients, rendering at pixels against analytic scenes and gradcheck."
import math
import pytest
import torch
import torch.nn.functional as F
from condense_nb.cameras import intrinsics, look_at, get_rays
from condense_nb.raymarch import render_rays
from condense_nb.consensus import (sample_patch_pixels, pixel_rays, render_features, consensus_loss, fidelity_loss,
                                   ProjectionHead)

BOX = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 2.0]])
RES = (8, 8, 8)                                    # 0.25 m voxels


def slab_occ():
    occ = torch.zeros(RES); occ[2, 1:-1, 1:-1] = 1.0   # z in [0.5, 0.75), one voxel in from the box's sides
    return occ


def cam(eye=(0.1, 0.05, 3.0), target=(0.1, 0.0, 0.0), w=16, h=12):
    return intrinsics(60, w, h), look_at(list(eye), list(target), up=(0.0, 1.0, 0.0)), w, h


# ---------------------------------------------------------------- losses

def test_cosine_hand_cases():
    a = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0], [-2.0, 1.0, 1.0]])
    assert consensus_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert consensus_loss(a, 3.7 * a).item() == pytest.approx(0.0, abs=1e-6)          # scale does not matter
    assert consensus_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)
    e = torch.eye(3)
    assert consensus_loss(e, e.roll(1, 0)).item() == pytest.approx(1.0, abs=1e-6)     # orthogonal
    # 45 degrees: 1 - cos(pi/4)
    assert consensus_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(1 - math.sqrt(0.5), abs=1e-6)


def test_l2_hand_computation_and_valid_mask():
    f3 = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
    f2 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    # squared distances summed over channels: 5, 1 + 4 = 5, 4
    assert consensus_loss(f3, f2, kind="l2").item() == pytest.approx((5 + 5 + 4) / 3)
    valid = torch.tensor([True, False, True])
    assert consensus_loss(f3, f2, kind="l2", valid=valid).item() == pytest.approx((5 + 4) / 2)
    f3g = f3.clone().requires_grad_(True)
    z = consensus_loss(f3g, f2, valid=torch.zeros(3, dtype=torch.bool))
    assert z.item() == 0.0
    z.backward()                                                                        # still part of the graph
    assert torch.equal(f3g.grad, torch.zeros_like(f3))


@pytest.mark.parametrize("kind", ["cosine", "l2"])
def test_stop_grad_exact_zero_on_stopped_side(kind):
    g = torch.Generator().manual_seed(0)
    base3, base2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    grads = {}
    for sg in ("none", "2d", "3d"):
        f3, f2 = base3.clone().requires_grad_(True), base2.clone().requires_grad_(True)
        consensus_loss(f3, f2, kind=kind, stop_grad=sg).backward()
        grads[sg] = (f3.grad, f2.grad)
    assert grads["2d"][1] is None or torch.count_nonzero(grads["2d"][1]) == 0
    assert grads["3d"][0] is None or torch.count_nonzero(grads["3d"][0]) == 0
    assert grads["none"][0].abs().sum() > 0 and grads["none"][1].abs().sum() > 0
    # the side that is not stopped gets exactly the gradient it gets when nothing is stopped
    assert torch.equal(grads["2d"][0], grads["none"][0]) and torch.equal(grads["3d"][1], grads["none"][1])
    if kind == "l2":                                                                    # d/da |a - b|^2 / P = 2 (a - b) / P
        assert torch.allclose(grads["none"][0], 2 * (base3 - base2) / 6, atol=1e-6)


def test_projection_head_in_loss():
    torch.manual_seed(0)
    head = ProjectionHead(4, 7)
    f3, f2 = torch.randn(5, 4), torch.randn(5, 7)
    want = (1 - F.cosine_similarity(f3 @ head.linear.weight.T + head.linear.bias, f2, dim=-1)).mean()
    assert torch.allclose(consensus_loss(f3, f2, head=head), want, atol=1e-6)
    with pytest.raises(ValueError, match="f3d, f2d: shapes differ"): consensus_loss(f3, f2)
    with pytest.raises(ValueError, match=r"f: expected a tensor \[\.\.\., 4\]"): consensus_loss(f2, f2, head=head)


def test_fidelity_loss_hand_values_and_teacher_frozen():
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]], requires_grad=True)   # [1, 2, 1, 2]: tokens (1, 0), (0, 2)
    t = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]], requires_grad=True)   # tokens (1, 0), (1, 2)
    l2 = fidelity_loss(s, t)
    assert l2.item() == pytest.approx((0 + 1) / 2)
    l2.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    cos = fidelity_loss(s.detach(), t.detach(), kind="cosine")
    assert cos.item() == pytest.approx((0 + 1 - 2 / math.sqrt(5)) / 2, abs=1e-6)
    assert fidelity_loss(s, s).item() == 0.0


def test_loss_bad_inputs():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="kind: unknown value"): consensus_loss(a, a, kind="huber")
    with pytest.raises(ValueError, match="stop_grad: unknown value"): consensus_loss(a, a, stop_grad="both")
    with pytest.raises(ValueError, match="valid: expected a bool tensor"): consensus_loss(a, a, valid=torch.ones(3))
    with pytest.raises(ValueError, match="f2d: contains NaN"): consensus_loss(a, a.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="f2d_student, f2d_teacher: shapes differ"):
        fidelity_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="in_dim: expected a positive int"): ProjectionHead(0, 3)


# ---------------------------------------------------------------- pixels and rays

@pytest.mark.parametrize("H,W,p", [(16, 24, 8), (14, 28, 14), (5, 5, 1), (12, 8, 4)])
def test_patch_pixel_centres(H, W, p):
    uv = sample_patch_pixels(H, W, p)
    assert uv.shape == (H // p * (W // p), 2)
    k = 0
    for i in range(H // p):                       # row-major over the token grid, like DenseEncoder
        for j in range(W // p):
            assert uv[k].tolist() == [(j + 0.5) * p, (i + 0.5) * p]
            k += 1


def test_patch_pixels_match_dense_encoder_token_order():
    "Changing the image only around patch centre k changes only token k (a ViT with no blocks: tokens don't mix)."
    timm = pytest.importorskip("timm")
    from condense_nb.encoders import DenseEncoder
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=(24, 32), patch_size=8, depth=0, embed_dim=16, num_heads=2,
                            num_classes=0, dynamic_img_size=True)
    enc = DenseEncoder(vit)
    img = torch.rand(1, 3, 24, 32)
    base = enc(img)[0].flatten(1).T                                               # [12, 16], token order
    uv = sample_patch_pixels(24, 32, 8)
    for k in (0, 5, 11):
        u, v = uv[k].long().tolist()
        img2 = img.clone(); img2[..., v - 1:v + 1, u - 1:u + 1] = 1 - img2[..., v - 1:v + 1, u - 1:u + 1]
        changed = (enc(img2)[0].flatten(1).T - base).abs().sum(1) > 1e-6
        assert changed.nonzero()[:, 0].tolist() == [k]


def test_pixel_rays_agree_with_get_rays():
    K = torch.tensor([[40.0, 0.3, 17.0], [0.0, 42.0, 11.0], [0.0, 0.0, 1.0]])          # with skew, off-centre
    V = look_at([1.0, -3.0, 1.5], [0.2, 0.1, 0.4])
    o, d = get_rays(K, V, 20, 15)
    r, c = torch.meshgrid(torch.arange(15), torch.arange(20), indexing="ij")
    po, pd = pixel_rays(K, V, torch.stack([c, r], -1).reshape(-1, 2) + 0.5)
    assert torch.allclose(pd, d.reshape(-1, 3), atol=1e-6) and torch.allclose(po, o.reshape(-1, 3), atol=1e-6)
    # and a ray through a patch centre projects back onto it
    from condense_nb.cameras import project
    uv = sample_patch_pixels(15, 20, 5)
    po, pd = pixel_rays(K, V, uv)
    back, z = project(po + 2.5 * pd, K, V)
    assert torch.allclose(back, uv, atol=1e-4) and (z > 0).all()


# ---------------------------------------------------------------- rendering

def test_constant_grid_renders_the_constant():
    occ = slab_occ()
    c = torch.tensor([0.5, -2.0, 1.0, 3.0])
    Fc = c[:, None, None, None].expand(4, *RES).contiguous()
    for eye in [(0.1, 0.05, 3.0), (1.5, -0.8, 2.5), (-0.7, 1.2, 1.8)]:
        K, V, w, h = cam(eye)
        out = render_features(Fc, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=96)
        v = out["valid"]
        assert v.sum() > 10 and torch.equal(v, out["opacity"] > 1e-3)
        assert torch.allclose(out["features"][v], c.expand(int(v.sum()), 4), atol=1e-5)
        assert torch.equal(out["features"][~v], torch.zeros(int((~v).sum()), 4)) and torch.isinf(out["depth"][~v]).all()
        raw = render_features(Fc, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=96, normalize="none")
        assert torch.allclose(raw["features"], c * raw["opacity"][:, None], atol=1e-5)


def test_premultiplied_ignores_features_of_empty_voxels():
    occ = slab_occ()
    c = torch.tensor([1.5, -0.5])
    Fm = torch.randn(2, *RES) * 10                                                   # garbage in empty voxels ...
    Fm[:, occ > 0] = c[:, None]                                                      # ... c in occupied ones
    K, V, w, h = cam((1.2, -0.6, 2.8))
    out = render_features(Fm, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=96, normalize="premultiplied")
    v = out["valid"]
    assert v.sum() > 10 and torch.allclose(out["features"][v], c.expand(int(v.sum()), 2), atol=1e-5)
    plain = render_features(Fm, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=96)
    assert not torch.allclose(plain["features"][v], c.expand(int(v.sum()), 2), atol=1e-2)   # the default mixes them in


def test_all_pixels_equal_render_rays_through_get_rays():
    torch.manual_seed(1)
    occ = slab_occ()
    Fr = torch.randn(3, *RES)
    K, V, w, h = cam((0.8, -1.0, 2.6))
    o, d = get_rays(K, V, w, h)
    ref = render_rays(Fr, occ[None] * 30.0, BOX, o.reshape(-1, 3), d.reshape(-1, 3), n_samples=64, occupancy=occ)
    out = render_features(Fr, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=64, chunk=37)
    assert torch.allclose(out["opacity"], ref["opacity"], atol=1e-6)
    v = out["valid"]
    assert torch.allclose(out["features"][v], ref["values"][v] / ref["opacity"][v, None], atol=1e-5)
    zdepth = ref["depth"] / ref["opacity"].clamp_min(1e-9) * (d.reshape(-1, 3) @ V[2, :3])
    assert torch.allclose(out["depth"][v], zdepth[v], atol=1e-5)
    # explicit pixel centres give the same; patch centres are a subset with the stride
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    same = render_features(Fr, occ[None] * 30.0, BOX, K, V, w, h, pixels=torch.stack([c, r], -1).reshape(-1, 2) + 0.5,
                           occupancy=occ, n_samples=64)
    assert torch.allclose(same["features"], out["features"], atol=1e-6)


def test_rendered_depth_of_a_plane():
    "A fine grid with a thick dense layer: rendered z-depth is the plane's, within one voxel along the ray."
    box = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    res = (40, 16, 16)                                                                # 2.5 cm in z
    occ = torch.zeros(res); occ[:20, 2:-2, 2:-2] = 1.0                                # solid up to z = 0.5
    K, V, w, h = intrinsics(50, 12, 10), look_at([0.3, -0.6, 2.0], [0.0, 0.0, 0.5]), 12, 10
    out = render_features(torch.ones(1, *res), occ[None] * 400.0, box, K, V, w, h, occupancy=occ, n_samples=400)
    o, d = get_rays(K, V, w, h)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    s_plane = (0.5 - o[:, 2]) / d[:, 2]                                               # ray distance to z = 0.5
    p = o + d * s_plane[:, None]
    inner = (p[:, :2].abs() < 0.6).all(-1)                                            # well inside the layer's top face
    z_plane = s_plane * (d @ V[2, :3])
    assert inner.sum() > 20 and out["valid"][inner].all()
    err = (out["depth"][inner] - z_plane[inner]) / (d[inner] @ V[2, :3]) * (-d[inner, 2])   # error along the normal
    assert err.abs().max() < 0.025


def test_gradcheck_float64():
    torch.manual_seed(0)
    res = (3, 4, 4)
    box = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    occ = torch.zeros(res, dtype=torch.float64); occ[1, 1:3, 1:3] = 1.0
    K, V = intrinsics(60, 4, 3).double(), look_at([0.2, 0.1, 2.5], [0.0, 0.0, 0.0], up=(0.0, 1.0, 0.0)).double()
    Fs = torch.randn(2, *res, dtype=torch.float64, requires_grad=True)
    dens = (occ[None] * 5.0 + 0.5).requires_grad_(True)
    for norm in ("opacity", "premultiplied"):
        f = lambda x: render_features(x, dens, box, K, V, 4, 3, occupancy=occ, n_samples=16, normalize=norm)["features"]
        assert torch.autograd.gradcheck(f, (Fs,), eps=1e-6, atol=1e-5)
    g = lambda de: render_features(Fs, de, box, K, V, 4, 3, n_samples=16, detach_density=False)["features"]
    assert torch.autograd.gradcheck(g, (dens,), eps=1e-6, atol=1e-5)
    out = render_features(Fs, dens, box, K, V, 4, 3, n_samples=16)                    # detached by default
    out["features"].sum().backward()
    assert dens.grad is None and Fs.grad.abs().sum() > 0


def test_projection_commutes_with_normalised_rendering():
    torch.manual_seed(2)
    occ = slab_occ()
    head = ProjectionHead(3, 6)
    Fr = torch.randn(3, *RES)
    K, V, w, h = cam((0.4, 0.9, 2.7))
    with torch.no_grad():
        wide = head(Fr.permute(1, 2, 3, 0)).permute(3, 0, 1, 2)
        a = render_features(wide, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=64)
        b = render_features(Fr, occ[None] * 30.0, BOX, K, V, w, h, occupancy=occ, n_samples=64)
    v = b["valid"]
    assert torch.allclose(head(b["features"][v]), a["features"][v], atol=1e-4)


def test_render_bad_inputs():
    occ = slab_occ()
    K, V, w, h = cam()
    Fc = torch.ones(2, *RES)
    with pytest.raises(ValueError, match="density: expected shape"): render_features(Fc, torch.ones(2, *RES), BOX, K, V, w, h)
    with pytest.raises(ValueError, match="normalize: unknown value"): render_features(Fc, occ[None], BOX, K, V, w, h, normalize="max")
    with pytest.raises(ValueError, match="occupancy: required"): render_features(Fc, occ[None], BOX, K, V, w, h, normalize="premultiplied")
    with pytest.raises(ValueError, match="occupancy: expected the feature grid's spatial shape"):
        render_features(Fc, occ[None], BOX, K, V, w, h, occupancy=torch.ones(4, 4, 4), normalize="premultiplied")
    with pytest.raises(ValueError, match="pixels: \\(u, v\\) coordinates must lie"):
        render_features(Fc, occ[None], BOX, K, V, w, h, pixels=torch.tensor([[17.0, 3.0]]))
    with pytest.raises(ValueError, match="pixels: expected shape"): render_features(Fc, occ[None], BOX, K, V, w, h, pixels=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="must be divisible by patch_size=5"): render_features(Fc, occ[None], BOX, K, V, w, h, pixels=5)
    with pytest.raises(ValueError, match="aabb: expected max > min"):
        render_features(Fc, occ[None], torch.tensor([[0.0, 0, 0], [1, -1, 1]]), K, V, w, h)
    with pytest.raises(ValueError, match="K: focal lengths must be positive"): render_features(Fc, occ[None], BOX, -K, V, w, h)
    with pytest.raises(ValueError, match="patch_size: expected a positive int"): sample_patch_pixels(8, 8, 0)
    with pytest.raises(ValueError, match="height: expected a positive int"): sample_patch_pixels(8.0, 8, 2)
