"""Tests for the 2D-guidance part of condense_nb.guidance: guided/random masking (partition, exact ratio, T -> 0
limit, T -> inf uniformity, Plackett-Luce inclusion frequencies against exact enumeration and torch.multinomial),
the CLS->patch saliency against timm's own attention matrix and a manual forward pass, the token read-back,
softmax_uniformity on analytic cases, the explorer widget headless, and bad input."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import timm

from condense_nb.encoders import DenseEncoder
from condense_nb.projection import project_views, points_to_pixels
from condense_nb.guidance import (teacher_guidance, cls_patch_attention, token_guidance, cloud_guidance, guided_mask,
                                random_mask, mask_to_bool, softmax_uniformity, plot_guidance_3d, guidance_explorer)


def _is_partition(vis, msk, G):
    allidx = torch.cat([vis, msk], 1)
    return bool((allidx.sort(1).values == torch.arange(G)).all())


# ----------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("G,ratio", [(64, 0.8), (64, 0.6), (10, 0.0), (7, 0.5), (1, 0.9), (13, 0.99), (64, 0.3)])
@pytest.mark.parametrize("T", [0.0, 1e-6, 1.0, 1e6])
def test_guided_mask_partition_and_exact_ratio(G, ratio, T):
    g = torch.Generator().manual_seed(G)
    sal = torch.rand(3, G, generator=g)
    vis, msk = guided_mask(sal, ratio, T, generator=g)
    n_mask = int(ratio * G)
    assert vis.shape == (3, G - n_mask) and msk.shape == (3, n_mask) and vis.dtype == torch.long
    assert _is_partition(vis, msk, G)
    m = mask_to_bool(msk, G)
    assert m.sum(1).tolist() == [n_mask] * 3 and not m.gather(1, vis).any()


def _topk_by_hand(s, k):
    return [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in s.tolist()]


@pytest.mark.parametrize("T", [0.0, 1e-6, 1e-12, 1e-300])
def test_zero_temperature_keeps_most_salient(T):
    g = torch.Generator().manual_seed(0)
    sal = torch.randperm(40, generator=g).float().view(2, 20) * 1e-3 + 0.01     # distinct, gaps >= 1e-3 (like attention values)
    vis, _ = guided_mask(sal, 0.75, T, generator=g)
    assert [sorted(v) for v in vis.tolist()] == [sorted(t) for t in _topk_by_hand(sal, 5)]
    assert not torch.isnan(sal).any()


def test_zero_temperature_ties_are_deterministic():
    sal = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    vis, msk = guided_mask(sal, 0.6, 0.0)
    assert vis.tolist() == [[1, 2]] and msk.tolist() == [[4, 0, 3]]


def test_high_temperature_is_uniform():
    G, ratio, n = 10, 0.7, 6000
    sal = torch.linspace(0, 10, G)[None]                                         # p ratio e^(10/T) = 1.00001
    g = torch.Generator().manual_seed(1)
    vis, _ = guided_mask(sal.expand(n, -1), ratio, 1e6, generator=g)
    freq = torch.bincount(vis.flatten(), minlength=G).double() / n
    # each token is visible with probability 3/10; standard error sqrt(.21/6000) = 0.0059, margin > 5 sigma
    assert (freq - 0.3).abs().max() < 0.035
    vis_inf, _ = guided_mask(sal, ratio, math.inf, generator=g)                  # T = inf is allowed (random)
    assert vis_inf.shape == (1, 3)


def _pl_inclusion(p, k):
    "Exact Plackett-Luce probability that each item is among the first k draws without replacement (enumeration)."
    G = len(p)
    inc = [0.0] * G
    for prefix in itertools.permutations(range(G), k):
        prob, left = 1.0, 1.0
        for i in prefix:
            prob *= p[i] / left
            left -= p[i]
        for i in prefix: inc[i] += prob
    return torch.tensor(inc, dtype=torch.float64)


def test_plackett_luce_inclusion_at_temperature_one():
    sal = torch.tensor([[0.0, 0.4, 0.9, 1.5, 2.5]])
    p = sal.double().softmax(1)[0].tolist()
    exact = _pl_inclusion(p, 2)                                                  # ratio 0.6 of 5: 2 visible
    n = 20000
    g = torch.Generator().manual_seed(2)
    vis, _ = guided_mask(sal.expand(n, -1), 0.6, 1.0, generator=g)
    ours = torch.bincount(vis.flatten(), minlength=5).double() / n
    official = torch.bincount(torch.multinomial(torch.tensor(p).expand(n, -1), 5, replacement=False, generator=g)[:, :2].flatten(),
                              minlength=5).double() / n
    assert (ours - exact).abs().max() < 0.02 and (official - exact).abs().max() < 0.02   # SE <= 0.0035
    assert abs(exact.sum().item() - 2) < 1e-12


def test_more_salient_is_visible_more_often():
    G, n = 8, 20000
    sal = (torch.arange(G).float() * 0.7)[torch.randperm(G, generator=torch.Generator().manual_seed(3))][None]
    g = torch.Generator().manual_seed(4)
    vis, _ = guided_mask(sal.expand(n, -1), 5 / 8, 1.0, generator=g)
    freq = torch.bincount(vis.flatten(), minlength=G).double() / n
    order = sal[0].argsort()
    assert (freq[order].diff() > 0).all()                                        # strictly increasing with saliency
    exact = _pl_inclusion(sal[0].double().softmax(0).tolist(), 3)
    assert (freq - exact).abs().max() < 0.02


def test_generator_reproducible_and_cuda_free():
    sal = torch.rand(2, 30)
    a = guided_mask(sal, 0.5, 1.0, torch.Generator().manual_seed(5))
    b = guided_mask(sal, 0.5, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_random_mask_partitions_and_is_uniform():
    g = torch.Generator().manual_seed(6)
    vis, msk = random_mask(5000, 8, 0.75, generator=g)
    assert vis.shape == (5000, 2) and msk.shape == (5000, 6) and _is_partition(vis, msk, 8)
    freq = torch.bincount(vis.flatten(), minlength=8).double() / 5000
    assert (freq - 0.25).abs().max() < 0.04                                      # SE 0.0061
    assert torch.equal(random_mask(2, 8, 0.5, torch.Generator().manual_seed(1))[0], random_mask(2, 8, 0.5, torch.Generator().manual_seed(1))[0])


def test_masking_bad_input():
    sal = torch.rand(2, 10)
    for r in (1.0, 1.5, -0.01, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match="mask_ratio"): guided_mask(sal, r)
        with pytest.raises(ValueError, match="mask_ratio"): random_mask(2, 10, r)
    bad = sal.clone(); bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="saliency: contains NaN"): guided_mask(bad, 0.5)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="saliency: contains NaN"): guided_mask(bad, 0.5)
    with pytest.raises(ValueError, match="saliency: expected shape"): guided_mask(torch.rand(10), 0.5)
    with pytest.raises(ValueError, match="saliency: expected"): guided_mask(torch.rand(2, 0), 0.5)
    for T in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="temperature"): guided_mask(sal, 0.5, T)
    with pytest.raises(ValueError, match="G: expected"): random_mask(2, 0, 0.5)
    with pytest.raises(ValueError, match="B: expected"): random_mask(1.5, 4, 0.5)


# ----------------------------------------------------------------------------------------------- uniformity
def test_softmax_uniformity_analytic():
    g = torch.Generator().manual_seed(7)
    flat = softmax_uniformity(torch.full((2, 20), 0.005), 0.8, 1.0, n_draws=400, generator=g)
    assert abs(flat["max_min_ratio"] - 1) < 1e-12 and abs(flat["kl_to_uniform"]) < 1e-12 and abs(flat["entropy_ratio"] - 1) < 1e-12
    assert flat["overlap_random"] == 4 / 20 and abs(flat["overlap_guided"] - 0.2) < 0.05
    s = torch.tensor([[0.0, 0.3, 0.6, 0.9, 1.2]], dtype=torch.float64)
    u = softmax_uniformity(s, 0.6, 0.5, n_draws=10, generator=g)
    assert abs(u["max_min_ratio"] - math.exp(1.2 / 0.5)) < 1e-9
    p = (s.double() / 0.5).softmax(1)
    assert abs(u["kl_to_uniform"] - (p * (p * 5).log()).sum().item()) < 1e-9
    sharp = softmax_uniformity(torch.arange(20.0)[None], 0.8, 1e-3, n_draws=50, generator=g)
    assert sharp["overlap_guided"] == 1.0
    with pytest.raises(ValueError, match="temperature"): softmax_uniformity(s, 0.6, 0.0)


# ----------------------------------------------------------------------------------------------- teacher saliency
def _vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **args)


def _timm_attention(vit, x):
    "timm's own attention matrix of the last block (non-fused path), captured at attn_drop: [B, H, T, T]."
    blk = vit.blocks[-1]
    got = {}
    h = blk.attn.attn_drop.register_forward_hook(lambda m, i, o: got.__setitem__("A", o))
    old = blk.attn.fused_attn
    blk.attn.fused_attn = False
    try:
        with torch.no_grad(): vit.forward_features(x)
    finally:
        h.remove(); blk.attn.fused_attn = old
    return got["A"]


def _manual_cls_attention(vit, x):
    "From scratch: embed, run all but the last block, then LayerNorm + qkv + softmax(q k^T / sqrt(d)) written out."
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for blk in vit.blocks[:-1]: t = blk(t)
        blk = vit.blocks[-1]
        y = F.layer_norm(t, (t.shape[-1],), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        W = blk.attn.qkv.weight
        b = blk.attn.qkv.bias if blk.attn.qkv.bias is not None else torch.zeros(W.shape[0])
        C, H = t.shape[-1], blk.attn.num_heads
        d = C // H
        q, k = y @ W[:C].T + b[:C], y @ W[C:2 * C].T + b[C:2 * C]
        out = []
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            logits = torch.einsum("bd,btd->bt", q[:, 0, sl], k[:, :, sl]) / math.sqrt(d)     # CLS query vs all keys
            out.append(torch.softmax(logits, -1))
        return torch.stack(out, 1)                                                   # [B, H, T]


@pytest.mark.parametrize("kw", [dict(), dict(reg_tokens=4), dict(qkv_bias=False, init_values=0.1)])
def test_cls_attention_matches_timm_and_manual(kw):
    vit = _vit(**kw)
    enc = DenseEncoder(vit)
    P = vit.num_prefix_tokens
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 3, 32, 32, generator=g)                             # [B, V, 3, S, S]
    feats, sal = teacher_guidance(enc, images)
    assert feats.shape == (2, 3, 48, 4, 4) and sal.shape == (2, 3, 4, 4)
    x = (images.flatten(0, 1) - enc.mean) / enc.std                              # the encoder's normalised input
    A = _timm_attention(vit, x)                                                  # [6, H, T, T]
    torch.testing.assert_close(sal.flatten(0, 1).flatten(1), A[:, :, 0, P:].mean(1), atol=1e-6, rtol=1e-5)
    man = _manual_cls_attention(vit, x)
    torch.testing.assert_close(sal.flatten(0, 1).flatten(1), man[:, :, P:].mean(1), atol=1e-6, rtol=1e-5)
    assert torch.allclose(man.sum(-1), torch.ones(6, 3))                         # sanity of the manual softmax
    # features are the encoder's own dense map; the hook is removed afterwards
    torch.testing.assert_close(feats.flatten(0, 1), enc(images.flatten(0, 1)))
    assert not vit.blocks[-1]._forward_pre_hooks


def test_norm_saliency_and_raw_vit():
    vit = _vit()
    images = torch.rand(1, 3, 3, 32, 32)
    feats, sal = teacher_guidance(vit, images, saliency="norm")                  # a bare timm ViT is wrapped
    torch.testing.assert_close(sal, feats.norm(dim=2))


def test_teacher_guidance_bad_input():
    vit = _vit()
    enc = DenseEncoder(vit)
    with pytest.raises(ValueError, match=r"images: expected a float tensor \[B, V, 3, S, S\]"): teacher_guidance(enc, torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="images"): teacher_guidance(enc, torch.rand(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match="saliency: unknown value"): teacher_guidance(enc, torch.rand(1, 3, 3, 32, 32), saliency="grad")
    with pytest.raises(ValueError, match="values in"): teacher_guidance(enc, 2 + torch.rand(1, 3, 3, 32, 32))
    bad = torch.rand(1, 3, 3, 32, 32); bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"): teacher_guidance(enc, bad)
    nocls = _vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match=r"\[CLS\] token"): teacher_guidance(nocls, torch.rand(1, 3, 3, 32, 32))
    teacher_guidance(nocls, torch.rand(1, 3, 3, 32, 32), saliency="norm")         # the fallback works
    with pytest.raises(ValueError, match="encoder"): teacher_guidance("vit", torch.rand(1, 3, 3, 32, 32))


# ----------------------------------------------------------------------------------------------- read-back to tokens
def test_token_guidance_full_resolution_and_constant_maps():
    g = torch.Generator().manual_seed(8)
    pts = torch.rand(2, 300, 3, generator=g) * 2 - 1
    S = 32
    _, pix, prm = project_views(pts, S, return_params=True)
    centres = pts[:, [0, 10, 200]]
    # a full-resolution map equal to each pixel's row index: the read-back is the centre's row, averaged over views
    rows = torch.arange(S, dtype=torch.float32)[:, None].expand(S, S)
    sal = rows.expand(2, 3, S, S).clone()
    cp = points_to_pixels(centres, prm)                                          # [B, V, 3, 2]
    torch.testing.assert_close(token_guidance(centres, sal, prm), cp[..., 0].float().mean(1))
    # a constant map per view (any resolution): the mean of the constants, bicubic reproduces constants
    const = torch.tensor([0.2, 0.5, 2.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    torch.testing.assert_close(token_guidance(centres, const, prm), torch.full((2, 3), 0.9))
    w = torch.zeros(2, 3, 3); w[..., 2] = 1
    torch.testing.assert_close(token_guidance(centres, const, prm, weights=w), torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="saliency: expected"): token_guidance(centres, const[:, :2], prm)


def test_cloud_guidance_and_explorer_headless():
    vit = _vit()
    g = torch.Generator().manual_seed(9)
    pts = torch.rand(1, 200, 3, generator=g) * 2 - 1
    centres = pts[:, :16]
    out = cloud_guidance(vit, pts, centres, size=32, mode="zbuffer")
    assert out["token_saliency"].shape == (1, 16) and out["point_saliency"].shape == (1, 200)
    torch.testing.assert_close(out["token_saliency"], out["point_saliency"][:, :16])   # centres are cloud points
    fig = plot_guidance_3d(pts[0], out["point_saliency"][0], centres[0], torch.tensor([0, 3, 5]))
    assert [len(t.x) for t in fig.data] == [200, 3, 13]
    box = guidance_explorer(pts[0], out["point_saliency"][0], centres[0], out["token_saliency"][0])
    assert len(box.result.data[1].x) == 16 - int(0.8 * 16)
    top = set(out["token_saliency"][0].argsort(descending=True)[:8].tolist())
    f = box.draw(mask_ratio=0.5, greedy=True)
    xyz = torch.tensor([list(a) for a in zip(f.data[1].x, f.data[1].y, f.data[1].z)])
    got = {int(j) for j in (centres[0][None] == xyz[:, None]).all(-1).nonzero()[:, 1]}
    assert got == top
