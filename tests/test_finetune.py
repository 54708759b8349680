"""FiT3D Stage 2 (`condense_nb.finetune`) against independent truth.

* render_targets: a Gaussian so large that its render is analytically constant (α = 0.999 everywhere), decoded by
  the conv with zero padding and block-averaged by hand; the pooled weights; per-sample scenes in a batch;
* flip_batch: a target that is an exact function of the image stays that function of the flipped image;
* masked L1 by hand; the finetune loop: resume after an interruption equals an uninterrupted run (weights, AdamW
  state, losses), every ViT parameter is trained, the loss goes down, clear errors;
* combine: output channels of concat / add / linear, and add's error on unequal dimensions.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from condense_nb.cameras import intrinsics, look_at
from condense_nb.encoders import DenseEncoder
from condense_nb.lifting import FeatureGaussians
from condense_nb.finetune import (FinetuneConfig, combine, finetune, flip_batch, masked_l1, render_targets, trainable_copy)




def tiny_vit(dim=8, seed=0):
    torch.manual_seed(seed)
    return DenseEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=dim, num_heads=2)


def random_gaussians(n, low_dim, teacher_dim, seed):
    g = torch.Generator().manual_seed(seed)
    gs = FeatureGaussians(means=torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.4, 0.3]) + torch.tensor([0., 0, 2.5]),
                          quats=torch.randn(n, 4, generator=g), log_scales=torch.full((n, 3), math.log(0.15)),
                          opacity_logits=torch.randn(n, generator=g) + 1.0, sh0=torch.zeros(n, 3),
                          features=torch.randn(n, low_dim, generator=g), teacher_dim=teacher_dim)
    with torch.no_grad(): gs.decoder.weight.normal_(0, 0.3, generator=g)
    return gs


def toy_views(n_views, seed, W=32, H=24):
    g = torch.Generator().manual_seed(seed)
    K = intrinsics(60, W, H)
    vms = torch.stack([look_at([0.2 * i - 0.2, 0.1 * i, 0.0], [0, 0, 2.5], up=(0, -1, 0)) for i in range(n_views)])
    return dict(rgb=torch.rand(n_views, H, W, 3, generator=g), K=K.expand(n_views, 3, 3), viewmat=vms)


# ---------------------------------------------------------------- targets

def test_render_targets_constant_render_by_hand():
    H, W, p, d, C = 16, 24, 8, 3, 4
    f = torch.tensor([0.5, -1.0, 2.0])
    gs = FeatureGaussians(means=torch.tensor([[0., 0, 3]]), quats=torch.tensor([[1., 0, 0, 0]]), log_scales=torch.full((1, 3), math.log(1e3)),
                          opacity_logits=torch.tensor([20.0]), sh0=torch.zeros(1, 3), features=f[None], teacher_dim=C)
    with torch.no_grad(): gs.decoder.weight.copy_(torch.randn(C, d, 3, 3, generator=torch.Generator().manual_seed(0)))
    tgt, wts = render_targets([gs], dict(K=intrinsics(60, W, H)[None], viewmat=torch.eye(4)[None], size=(H, W)), p)
    # the splat covers the image with α = min(0.999, o·exp(-tiny)) = 0.999, so the render is 0.999·f everywhere;
    # the decoder sees that constant map with zero padding: a pixel gets the taps that fall inside the image
    Wt = gs.decoder.weight.detach()
    expected = torch.zeros(C, H, W)
    for i in range(H):
        for j in range(W):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if 0 <= i + di < H and 0 <= j + dj < W: expected[:, i, j] += Wt[:, :, di + 1, dj + 1] @ (0.999 * f)
    pooled = expected.reshape(C, H // p, p, W // p, p).mean((2, 4))
    assert tgt.shape == (1, C, 2, 3) and wts.shape == (1, 2, 3)
    torch.testing.assert_close(tgt[0], pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wts, torch.full((1, 2, 3), 0.999), rtol=0, atol=1e-6)


def test_render_targets_batch_of_scenes_matches_single_renders():
    g1, g2 = random_gaussians(50, 3, 5, 1), random_gaussians(50, 3, 5, 2)
    v = toy_views(2, 0)
    tgt, wts = render_targets([g1, g2], v, 8)
    for b, g in enumerate((g1, g2)):
        with torch.no_grad():
            low, alpha = g.render_lowdim(v["K"][b], v["viewmat"][b], 32, 24, return_alpha=True)
            full = g.decode(low)[0]
        torch.testing.assert_close(tgt[b], full.reshape(5, 3, 8, 4, 8).mean((2, 4)))
        torch.testing.assert_close(wts[b], alpha.reshape(3, 8, 4, 8).mean((1, 3)))
    assert not torch.allclose(tgt[0], tgt[1])
    with pytest.raises(ValueError, match="not divisible by patch_size=7"): render_targets([g1, g2], v, 7)
    with pytest.raises(ValueError, match=r"view\['K'\]: expected shape \[1, 3, 3\]"): render_targets([g1], v, 8)


# ---------------------------------------------------------------- flips

def test_flip_keeps_image_and_target_consistent():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 16, 24, generator=g)
    fn = lambda x: torch.cat([F.avg_pool2d(x, 8), F.max_pool2d(x[:, :1], 8) * 2], 1)   # a target that is a function of the image
    weights = F.avg_pool2d(images[:, 1:2], 8)[:, 0]
    flip = torch.tensor([True, False, True, True, False])
    fi, ft, fw = flip_batch(images, fn(images), weights, flip)
    torch.testing.assert_close(ft, fn(fi))
    torch.testing.assert_close(fw, F.avg_pool2d(fi[:, 1:2], 8)[:, 0])
    assert torch.equal(fi[~flip], images[~flip]) and torch.equal(fi[flip], images[flip].flip(-1))
    assert not torch.equal(fi[0], images[0])                                        # it did flip (the image is not symmetric)
    with pytest.raises(ValueError, match="flip: expected"): flip_batch(images, fn(images), weights, flip[:3])


def test_masked_l1_by_hand():
    pred = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])       # [1, 2, 1, 2]
    tgt = torch.tensor([[[[0.0, 0.0]], [[1.0, 4.0]]]])
    w = torch.tensor([[[1.0, 0.5]]])
    # |diff| per token summed over channels: (1 + 1) at token 0, (2 + 4) at token 1; weighted 2*1 + 6*0.5 = 5; / (C=2 * Σw=1.5)
    assert math.isclose(masked_l1(pred, tgt, w).item(), 5 / 3, rel_tol=1e-6)
    assert math.isclose(masked_l1(pred, tgt, torch.ones(1, 1, 2)).item(), (pred - tgt).abs().mean().item(), rel_tol=1e-6)


# ---------------------------------------------------------------- the loop

def _scenes(dim):
    return [(random_gaussians(60, 3, dim, s), toy_views(3, s)) for s in (0, 1)]


def test_finetune_resume_equals_uninterrupted(tmp_path):
    teacher, scenes = tiny_vit(), _scenes(8)
    cfg = FinetuneConfig.from_preset("tiny", epochs=2, ckpt_every=2, lr=1e-3)         # 6 samples, batch 2: 6 steps
    log_a = []
    a = finetune(trainable_copy(teacher), scenes, cfg, ckpt_dir=tmp_path / "a", log=log_a)
    log_b1 = []
    b = finetune(trainable_copy(teacher), scenes, cfg, ckpt_dir=tmp_path / "b", stop_after=3, log=log_b1)
    assert len(log_b1) == 3
    log_b = []
    b = finetune(trainable_copy(teacher), scenes, cfg, ckpt_dir=tmp_path / "b", log=log_b)   # a fresh process would do this
    assert [r["step"] for r in log_a] == list(range(1, 7)) and log_b == log_a
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-7, msg=k)
    # a finished run resumes to the same weights without training further
    c = finetune(trainable_copy(teacher), scenes, cfg, ckpt_dir=tmp_path / "a")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    with pytest.raises(ValueError, match="another config"):
        finetune(trainable_copy(teacher), scenes, FinetuneConfig.from_preset("tiny", epochs=2, lr=2e-3), ckpt_dir=tmp_path / "a")


def test_finetune_trains_every_parameter_and_lowers_the_loss():
    teacher, scenes = tiny_vit(), _scenes(8)
    cfg = FinetuneConfig.from_preset("tiny", epochs=6, flip_p=0.0, grad_clip=1.0, lr=3e-3)
    log = []
    student = finetune(trainable_copy(teacher), scenes, cfg, log=log)
    before, after = dict(teacher.model.named_parameters()), dict(student.model.named_parameters())
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged
    first, last = sum(r["loss"] for r in log[:3]) / 3, sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert teacher.frozen and not any(p.requires_grad for p in teacher.parameters())   # the teacher is untouched


def test_finetune_errors():
    teacher = tiny_vit()
    with pytest.raises(ValueError, match="encoder: frozen"): finetune(teacher, _scenes(8), FinetuneConfig())
    with pytest.raises(ValueError, match="decode to 6 channels, the encoder has embed_dim=8"):
        finetune(trainable_copy(teacher), _scenes(6), FinetuneConfig())
    with pytest.raises(ValueError, match="scenes: expected a non-empty list"): finetune(trainable_copy(teacher), [], FinetuneConfig())
    with pytest.raises(ValueError, match="preset: unknown value"): FinetuneConfig.from_preset("huge")
    c = FinetuneConfig()
    assert (c.lr, c.weight_decay, c.epochs, c.batch_size, c.flip_p, c.grad_clip) == (1e-5, 1e-4, 1, 2, 0.5, 0.1)


# ---------------------------------------------------------------- combinations

def test_combine_modes_channels():
    a, b, c = tiny_vit(8), tiny_vit(8, seed=1), tiny_vit(12)
    x = torch.rand(2, 3, 32, 24)
    assert combine(a, c, "concat")(x).shape == (2, 20, 4, 3) and combine(a, c).out_channels == 20
    out = combine(a, b, "add")(x)
    torch.testing.assert_close(out, a(x) + b(x)); assert combine(a, b, "add").out_channels == 8
    with pytest.raises(ValueError, match="'add' needs equal channel counts, got teacher 8 and finetuned 12"): combine(a, c, "add")
    lin = combine(a, c, "linear", out_channels=5)
    assert lin(x).shape == (2, 5, 4, 3) and lin.out_channels == 5
    w = lin.fuse.weight.detach()[:, :, 0, 0]
    torch.testing.assert_close(lin(x), torch.einsum("oc,bchw->bohw", w, torch.cat([a(x), c(x)], 1)))
    torch.testing.assert_close(combine(a, b, "linear")(x), (a(x) + b(x)) / 2)          # initialised to the average
    # plain callables: channels are only known at run time
    f1, f2 = (lambda im: F.avg_pool2d(im, 8)), (lambda im: F.avg_pool2d(im, 4)[:, :2])
    assert combine(f1, f2)(x).shape == (2, 5, 4, 3)                                   # resized to the first grid
    with pytest.raises(ValueError, match="'add' needs equal channel counts, got 3 and 2"): combine(f1, f2, "add")(x)
    with pytest.raises(ValueError, match="channels: 'linear' needs"): combine(f1, f2, "linear")
