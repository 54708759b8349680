"""Tests for condense_nb.mae (the point MAE of I2P-MAE): output shapes, the 3D target and loss against brute-force
kNN/Chamfer references, the loss falling on a tiny run, the encoder seeing only visible tokens, invariance to the
order of the points, w_2d = 0 leaving gradients untouched, resume == uninterrupted training, checkpoints, configs."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from condense_nb.mae import (MAEConfig, from_preset, PointMAE, MAEEncoder, PointClassifier, Tokens, tokenize, token_targets,
                             global_feature, pool_tokens, param_groups, make_optimizer, lr_at, pretrain_step, pretrain,
                             cloud_loader, load_mae, save_checkpoint, scale_translate, plot_reconstruction)
from condense_nb.guidance import random_mask




def _clouds(B=2, N=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * (1 + 0.1 * torch.rand(B, N, 1, generator=g))   # noisy spheres


def _masks(B, G, ratio=0.6, seed=0):
    return random_mask(B, G, ratio, torch.Generator().manual_seed(seed))


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return PointMAE(from_preset("tiny", **kw))


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("P", [1, 4])
def test_output_shapes(P):
    C = 10
    m = _model(feat_dim=C, target_points=P)
    cfg = m.cfg
    B, G, k, D = 3, cfg.n_groups, cfg.group_size, cfg.dim
    x = _clouds(B)
    vis, msk = _masks(B, G)
    Gv, Gm = vis.shape[1], msk.shape[1]
    assert (Gv, Gm) == (G - cfg.n_masked, cfg.n_masked) == (13, 19)
    tgt = torch.randn(B, G, C) if P == 1 else torch.randn(B, G, P, C)
    out = m(x, vis, msk, tgt)
    assert out["loss"].shape == out["loss_3d"].shape == out["loss_2d"].shape == ()
    assert out["pred_points"].shape == out["target_points"].shape == (B, Gm, k, 3)
    assert out["pred_2d"].shape == (B, Gv, P, C)
    assert out["centres"].shape == (B, G, 3)
    assert out["tokens"].neigh.shape == (B, G, k, 3) and out["tokens"].idx.shape == (B, G, k)
    out0 = m(x, vis, msk)
    assert out0["loss_2d"] is None and out0["pred_2d"] is None and torch.equal(out0["loss"], out0["loss_3d"])
    tok, cen = m.encode(x)
    assert tok.shape == (B, G, D) and cen.shape == (B, G, 3)
    tok, cen = m.encode(x, vis)
    assert tok.shape == (B, Gv, D) and torch.equal(cen, out["centres"].gather(1, vis[..., None].expand(-1, -1, 3)))
    m.eval()
    assert m.global_feature(x).shape == (B, 2 * D)
    assert global_feature(m, x, "max").shape == global_feature(m.encoder, x, "sum").shape == (B, D)
    clf = PointClassifier(m, 5)
    assert clf(x).shape == (B, 5)
    assert PointClassifier(m.encoder, 5, pool="max", group_size=24, n_groups=16)(x).shape == (B, 5)
    assert token_targets(torch.randn(B, 512, C), out["tokens"], P).shape == tgt.shape


def test_pool_tokens_by_hand():
    x = torch.tensor([[[1., -2.], [3., 0.], [-1., 5.]]])
    assert pool_tokens(x).tolist() == [[3., 5., 1., 1.]]
    assert pool_tokens(x, "max").tolist() == [[3., 5.]]
    assert pool_tokens(x, "sum").tolist() == [[4., 6.]]


# ------------------------------------------------------------------------------- 3D target and loss, brute force
def test_targets_and_chamfer_against_brute_force():
    m = _model()
    x = _clouds(2, seed=1).double()
    m = m.double()
    vis, msk = _masks(2, m.cfg.n_groups, seed=1)
    out = m(x, vis, msk)
    k = m.cfg.group_size
    total = []
    for b in range(2):
        pts = x[b].numpy()
        for j, g in enumerate(msk[b].tolist()):
            c = out["centres"][b, g].numpy()
            d = ((pts - c) ** 2).sum(1)
            true = pts[np.argsort(d, kind="stable")[:k]] - c                     # brute-force kNN, centre-relative
            got = out["target_points"][b, j].numpy()
            assert np.allclose(np.sort(got, 0), np.sort(true, 0))                 # same set of points
            pred = out["pred_points"][b, j].detach().numpy()
            D = ((pred[:, None] - got[None]) ** 2).sum(-1)
            total.append(D.min(1).mean() + D.min(0).mean())
    assert math.isclose(out["loss_3d"].item(), float(np.mean(total)), rel_tol=1e-9)


def test_token_targets_by_hand():
    x = _clouds(1)
    tk = tokenize(x, 8, 6)
    f = torch.arange(512.)[None, :, None].expand(1, 512, 2) * torch.tensor([1., -1.])
    t1 = token_targets(f, tk)
    for g in range(8):
        assert torch.allclose(t1[0, g], torch.tensor([1., -1.]) * tk.idx[0, g].double().mean().float())
    t3 = token_targets(f, tk, 3)
    assert t3[0, 5, :, 0].tolist() == tk.idx[0, 5, [0, 2, 4]].float().tolist()
    with pytest.raises(ValueError, match="n_points: expected an int in"):
        token_targets(f, tk, 7)


# --------------------------------------------------------------------------------------------- loss falls
def test_loss_falls_on_a_tiny_run():
    from condense_nb.shapes import make_shape
    clouds = torch.stack([make_shape(c, 7 + c, 512)[0] for c in range(6)])
    m = _model(seed=0)
    cfg = m.cfg
    opt = make_optimizer(m, cfg)
    g = torch.Generator().manual_seed(0)
    losses = [pretrain_step(m, opt, clouds, None, None, cfg, lr=2e-3, generator=g)["loss"] for _ in range(50)]
    first, last = losses[0], float(np.mean(losses[-5:]))
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.5 * first, (first, last)


# --------------------------------------------------------------------------------- the encoder sees only visible
@pytest.mark.parametrize("train", [True, False])
def test_encoder_sees_only_visible_tokens(train):
    m = _model(seed=2)
    m.train(train)
    x = _clouds(2, seed=2)
    tk = m.encoder.tokenize(x)
    vis, msk = _masks(2, m.cfg.n_groups, seed=2)
    base, _ = m.encode(None, vis, tokens=tk)

    def perturbed(which):
        neigh, cen = tk.neigh.clone(), tk.centres.clone()
        for b in range(2):
            neigh[b, which[b]] = torch.randn_like(neigh[b, which[b]])
            cen[b, which[b]] += 5.0
        return Tokens(cen, neigh, tk.idx)

    other, _ = m.encode(None, vis, tokens=perturbed(msk))
    assert torch.equal(base, other)                                  # masked geometry never reaches the encoder
    changed, _ = m.encode(None, vis, tokens=perturbed(vis[:, :1]))
    assert not torch.allclose(base, changed)                         # control: visible geometry does


def test_2d_loss_only_on_visible_tokens():
    m = _model(seed=3, feat_dim=6)
    x = _clouds(2, seed=3)
    vis, msk = _masks(2, m.cfg.n_groups, seed=3)
    t = torch.randn(2, m.cfg.n_groups, 6)
    l0 = m(x, vis, msk, t)["loss_2d"]
    t_m, t_v = t.clone(), t.clone()
    for b in range(2): t_m[b, msk[b]] += 3.0; t_v[b, vis[b, 0]] += 3.0
    assert torch.equal(l0, m(x, vis, msk, t_m)["loss_2d"])
    assert not torch.equal(l0, m(x, vis, msk, t_v)["loss_2d"])


# ---------------------------------------------------------------------------------------- permutations
def test_point_order_does_not_change_tokens_when_fps_start_is_kept():
    "FPS starts at point 0, so a permutation that keeps point 0 in place gives the same centres, groups and tokens."
    m = _model(seed=4).eval()
    x = _clouds(2, seed=4)
    g = torch.Generator().manual_seed(4)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(511, generator=g)])
    with torch.no_grad():
        a, ca = m.encode(x)
        b, cb = m.encode(x[:, perm])
    assert torch.equal(ca, cb)
    assert torch.allclose(a, b, atol=1e-5)


def test_encoder_is_equivariant_to_the_order_of_visible_tokens():
    m = _model(seed=5).eval()
    x = _clouds(2, seed=5)
    vis, _ = _masks(2, m.cfg.n_groups, seed=5)
    p = torch.randperm(vis.shape[1], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, _ = m.encode(x, vis)
        b, _ = m.encode(x, vis[:, p])
    assert torch.allclose(a[:, p], b, atol=1e-5)


# ------------------------------------------------------------------------------------------------ w_2d = 0
def _grads(m, **kw):
    m.zero_grad(set_to_none=True)
    m(**kw)["loss"].backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}


def test_w2d_zero_has_no_gradient_effect():
    m = _model(seed=6, feat_dim=8)
    x = _clouds(2, seed=6)
    vis, msk = _masks(2, m.cfg.n_groups, seed=6)
    t = torch.randn(2, m.cfg.n_groups, 8)
    ref = _grads(m, points=x, visible_idx=vis, masked_idx=msk)                  # 3D loss only
    zero = _grads(m, points=x, visible_idx=vis, masked_idx=msk, targets_2d=t, w_2d=0.0)
    one = _grads(m, points=x, visible_idx=vis, masked_idx=msk, targets_2d=t, w_2d=1.0)
    assert ref["head_2d.weight"] is None and zero["head_2d.weight"] is None and one["head_2d.weight"] is not None
    for n in ref:
        if ref[n] is None: continue
        assert torch.equal(ref[n], zero[n]), n
    assert not torch.allclose(ref["encoder.blocks.0.attn.qkv.weight"], one["encoder.blocks.0.attn.qkv.weight"])
    out = m(x, vis, msk, t, w_2d=0.0)
    assert torch.equal(out["loss"], out["loss_3d"]) and out["loss_2d"] > 0


# ------------------------------------------------------------------------------------------- optimisation
def test_param_groups_and_schedule():
    m = _model(feat_dim=4)
    decay, free = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    dn, fn = {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in free["params"]}
    assert dn.isdisjoint(fn) and dn | fn == set(names.values())
    ndims = {n: p.ndim for n, p in m.named_parameters()}
    assert fn == {n for n, d in ndims.items() if d <= 1} | {"mask_token"}      # the official rule, by name and rank
    assert {"mask_token", "head_3d.bias", "encoder.norm.weight", "encoder.embed.first.1.weight"} <= fn   # token, bias, LN, BN
    assert {"head_3d.weight", "encoder.blocks.0.attn.qkv.weight", "encoder.embed.first.0.weight"} <= dn
    assert decay["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    cfg = from_preset("tiny", epochs=10, warmup_epochs=2, lr=1.0, min_lr=0.0, warmup_lr=0.0)
    assert lr_at(cfg, 0) == 0 and lr_at(cfg, 1) == 0.5 and lr_at(cfg, 2) == 1.0
    assert math.isclose(lr_at(cfg, 6), 0.5) and math.isclose(lr_at(cfg, 4), (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(cfg, 10) == 0.0 and lr_at(cfg, 12) == 0.0


# ----------------------------------------------------------------------------------- checkpoints and resume
def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_uninterrupted(tmp_path):
    from condense_nb.shapes import make_shape
    clouds = torch.stack([make_shape(c, 40 + c, 512)[0] for c in range(8)])
    cfg = from_preset("tiny", epochs=3, warmup_epochs=1, batch_size=4, drop_path=0.2, feat_dim=3)
    targets = torch.randn(8, cfg.n_groups, 3, generator=torch.Generator().manual_seed(0))
    base = cloud_loader(clouds, 4, seed=1, augment=True)

    def loader(epoch, fail_at=None):   # alternate plain batches and dict batches with 2D targets
        out = []
        for i, b in enumerate(base(epoch)):
            if (epoch, i) == fail_at: raise KeyboardInterrupt
            out.append(b if i % 2 == 0 else dict(points=b, targets_2d=targets[:4]))
        return out

    torch.manual_seed(0); a = PointMAE(cfg)
    hist_a = pretrain(a, loader, cfg, tmp_path / "a", progress=False)
    torch.manual_seed(0); b = PointMAE(cfg)
    with pytest.raises(KeyboardInterrupt):
        pretrain(b, lambda e: loader(e, fail_at=(2, 0)), cfg, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 2
    torch.manual_seed(123); b2 = PointMAE(cfg)                      # a fresh process would start from another init
    hist_b = pretrain(b2, loader, cfg, tmp_path / "b", progress=False)
    assert _state_equal(a.state_dict(), b2.state_dict())
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in h]
    assert strip(hist_a) == strip(hist_b) and len(hist_a) == 3 and hist_a[0]["loss_2d"] is not None
    # the optimizer state was restored too: one more identical step on both keeps them identical
    oa, ob = make_optimizer(a, cfg), make_optimizer(b2, cfg)
    from condense_nb.mae import load_mae_checkpoint
    load_mae_checkpoint(tmp_path / "a", a, oa, cfg); load_mae_checkpoint(tmp_path / "b", b2, ob, cfg)
    assert oa.state_dict()["state"].keys() == ob.state_dict()["state"].keys()
    for i, s in oa.state_dict()["state"].items():
        assert all(torch.equal(s[k], ob.state_dict()["state"][i][k]) for k in s)
    # kept checkpoints: the last two; load_mae rebuilds the model
    assert sorted(p.name for p in (tmp_path / "a" / "ckpt").iterdir()) == ["step_0000002.safetensors", "step_0000003.safetensors"]
    c = load_mae(tmp_path / "a")
    a.eval()
    with torch.no_grad(): assert torch.equal(c.encode(clouds[:2])[0], a.encode(clouds[:2])[0])


def test_checkpoint_errors(tmp_path):
    cfg = from_preset("tiny", epochs=1)
    clouds = _clouds(8)
    m = _model()
    pretrain(m, cloud_loader(clouds, 8), cfg, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="trained with another config"):
        pretrain(_model(), cloud_loader(clouds, 8), from_preset("tiny", epochs=1, lr=5e-4), tmp_path / "r", progress=False)
    pretrain(_model(), cloud_loader(clouds, 8), from_preset("tiny", epochs=1, keep_ckpts=5), tmp_path / "r", progress=False)  # bookkeeping may change
    with pytest.raises(ValueError, match="architecture fields"):
        pretrain(_model(), cloud_loader(clouds, 8), from_preset("tiny", dim=32), tmp_path / "s", progress=False)
    for ck in (tmp_path / "r" / "ckpt").glob("step_*.safetensors"): ck.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not restore checkpoint step_0000001.safetensors .*unreadable"):
        load_mae(tmp_path / "r")
    with pytest.raises(ValueError, match="unreadable"):
        load_mae(tmp_path / "r" / "ckpt" / "step_0000001.safetensors")
    with pytest.raises(ValueError, match="nothing: checkpoint not found"):
        load_mae(tmp_path / "nothing")
    with pytest.raises(ValueError, match="yielded no batches"):
        pretrain(_model(), lambda e: [], cfg, tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match="give both 'visible_idx' and 'masked_idx'"):
        pretrain(_model(), lambda e: [dict(points=clouds, visible_idx=torch.zeros(8, 3, dtype=torch.long))], cfg,
                 tmp_path / "u", progress=False)


def test_scale_translate_ranges():
    x = torch.ones(500, 4, 3)
    y = scale_translate(x, torch.Generator().manual_seed(0))
    s = y[:, 1] - y[:, 0]                                            # = 0: the same point -> same image
    assert torch.equal(s, torch.zeros_like(s))
    assert y.min() >= 2 / 3 - 0.2 - 1e-6 and y.max() <= 1.5 + 0.2 + 1e-6


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,msg", [
    (dict(dim=66), "MAEConfig.dim: expected a multiple of heads=4"),
    (dict(mask_ratio=1.0), "MAEConfig.mask_ratio: expected a number in (0, 1)"),
    (dict(mask_ratio=0.02), "masks at least one"),
    (dict(n_groups=600), "MAEConfig.n_groups: expected <= n_points=512"),
    (dict(target_points=17), "MAEConfig.target_points: expected <= group_size=16"),
    (dict(feat_dim=0), "MAEConfig.feat_dim: expected a positive int (an int >= 1)"),
    (dict(warmup_epochs=9), "MAEConfig.warmup_epochs: expected <= epochs=4"),
    (dict(depth=1.5), "MAEConfig.depth: expected a positive int (an int >= 1)"),
    (dict(lr=float("nan")), "MAEConfig.lr: expected a positive number (a number > 0)"),
    (dict(dimm=1), "unknown MAEConfig field(s) ['dimm']"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        from_preset("tiny", **kw)


def test_config_numpy_scalars_become_python_numbers():
    "NumPy scalars pass the config checks and are stored as Python numbers, so the config still serialises to JSON."
    cfg = from_preset("tiny", epochs=np.int64(5), seed=np.int32(3), lr=np.float32(0.5), feat_dim=np.int64(8))
    assert (type(cfg.epochs), type(cfg.seed), type(cfg.lr), type(cfg.feat_dim)) == (int, int, float, int)
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["lr"] == 0.5
    with pytest.raises(ValueError, match="MAEConfig.depth"): from_preset("tiny", depth=np.bool_(True))


def test_bad_preset_and_inputs():
    with pytest.raises(ValueError, match="preset: unknown value 'medium'"):
        from_preset("medium")
    with pytest.raises(ValueError, match="cfg: expected an MAEConfig"):
        PointMAE(dict(dim=3))
    m = _model(feat_dim=4)
    x = _clouds(2)
    G = m.cfg.n_groups
    vis, msk = _masks(2, G)
    with pytest.raises(ValueError, match="a token is listed twice"):
        m(x, vis, torch.cat([msk[:, 1:], vis[:, :1]], 1))
    with pytest.raises(ValueError, match=r"masked_idx: token indices must lie in \[0, 31\]"):
        m(x, vis, msk + 40)
    with pytest.raises(ValueError, match="visible_idx: expected an integer tensor"):
        m(x, vis.float(), msk)
    with pytest.raises(ValueError, match="visible_idx: expected an integer tensor"):
        m(x, vis[:1], msk)
    with pytest.raises(ValueError, match=r"targets_2d: expected a float tensor \[2, 32, 4\]"):
        m(x, vis, msk, torch.randn(2, G - 1, 4))
    with pytest.raises(ValueError, match="targets_2d: contains NaN"):
        m(x, vis, msk, torch.full((2, G, 4), float("nan")))
    with pytest.raises(ValueError, match="no 2D head"):
        _model()(x, vis, msk, torch.randn(2, G, 4))
    with pytest.raises(ValueError, match=r"points: expected shape \[B, N, 3\]"):
        m(x[..., :2], vis, msk)
    with pytest.raises(ValueError, match="batch_points: contains NaN"):
        pretrain_step(m, make_optimizer(m, m.cfg), torch.full((2, 512, 3), float("nan")))
    with pytest.raises(ValueError, match="n_classes: expected an int >= 2"):
        PointClassifier(m, 1)
    with pytest.raises(ValueError, match="batch_size: expected an int in"):
        cloud_loader(x, 3)


def test_plot_reconstruction_headless():
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = _model().eval()
    x = _clouds(2)
    vis, msk = _masks(2, m.cfg.n_groups)
    with torch.no_grad(): fig = plot_reconstruction(m(x, vis, msk), b=1, title="t")
    assert len(fig.axes) == 3
    plt.close(fig)
