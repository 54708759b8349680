"Tests of condense_nb.probes: linear probes on frozen features, against analytic cases and independent metric code."
import json, math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense_nb import probes, features
from condense_nb.probes import IGNORE_INDEX, SEG_KEYS, DEPTH_KEYS, SegProbe, DepthProbe, depth_loss, eval_depth_probe, eval_seg_probe, fit_depth_probe, fit_seg_probe, format_table, predict_depth, predict_seg, run_probes, seg_labels, seg_loss, summarize
from condense_nb.features import cached_features, concat_feature_fns, extract_features, images_fingerprint, load_features, rgb_feature_fn, save_features
from condense_nb.metrics import segmentation_metrics, depth_metrics




K = 5
A = torch.randn(8, K, generator=torch.Generator().manual_seed(123))      # one fixed linear map for every split


def onehot_split(n, seed, H=12, W=16, ignore_frac=0.1):
    "Per-pixel random labels (some ignored) and features that are a linear function of their one-hot code."
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n, H, W), generator=g)
    labels[torch.rand(n, H, W, generator=g) < ignore_frac] = IGNORE_INDEX
    onehot = F.one_hot(labels.clamp(max=K - 1), K).float() * (labels != IGNORE_INDEX)[..., None]  # zeros where ignored
    feats = torch.einsum("ck,nhwk->nchw", A, onehot) + 0.5                                         # affine, same resolution
    return feats, labels


def logdepth_split(n, seed, H=12, W=16, C=4):
    "Depth maps with invalid (inf) pixels; channel 0 of the features is log-depth, the rest noise."
    g = torch.Generator().manual_seed(seed)
    depth = torch.exp(torch.rand(n, H, W, generator=g) * 2.5 - 0.5)                                # 0.6 .. 7.4 m
    feats = torch.cat([depth.log()[:, None], torch.randn(n, C - 1, H, W, generator=g)], 1)
    depth[torch.rand(n, H, W, generator=g) < 0.15] = math.inf
    feats[:, 0][torch.isinf(depth)] = 0.0
    return feats, depth


# ----------------------------------------------------------------------------- segmentation

def test_seg_probe_reads_linear_onehot_features_perfectly_and_noise_poorly():
    (trf, trl), (vaf, val), (tef, tel) = onehot_split(12, 0), onehot_split(6, 1), onehot_split(6, 2)
    probe, hist = fit_seg_probe(trf, trl, vaf, val, K, lrs=(1e-2, 1e-1), epochs=15)
    res = eval_seg_probe(probe, tef, tel, K)
    assert res["mIoU"] > 0.99 and res["aAcc"] > 0.995
    # independent metric code on the probe's predictions gives the same numbers
    ref = segmentation_metrics(predict_seg(probe, tef, tel.shape[-2:]), tel, K, IGNORE_INDEX)
    assert {k: res[k] for k in ref} == pytest.approx(ref)
    assert np.mean([v for v in res["IoU_per_class"] if v is not None]) == pytest.approx(res["mIoU"])   # mIoU is their mean
    g = torch.Generator().manual_seed(5)
    noise = lambda f: torch.randn(f.shape, generator=g)
    nprobe, _ = fit_seg_probe(noise(trf), trl, noise(vaf), val, K, lrs=(1e-2, 1e-1), epochs=15)
    assert eval_seg_probe(nprobe, noise(tef), tel, K)["mIoU"] < 0.35          # chance IoU for 5 balanced classes ~ 0.11


def test_seg_probe_on_rgb_features_is_much_worse_than_on_label_features():
    "Images whose colour is unrelated to the label: the RGB baseline cannot segment, the label-derived features can."
    (trf, trl), (vaf, val), (tef, tel) = onehot_split(8, 0), onehot_split(4, 1), onehot_split(4, 2)
    g = torch.Generator().manual_seed(0)
    imgs = {s: torch.rand(n, 3, 12, 16, generator=g) for s, n in [("train", 8), ("val", 4), ("test", 4)]}
    rgb = {s: extract_features(rgb_feature_fn(1), im) for s, im in imgs.items()}
    p_rgb, _ = fit_seg_probe(rgb["train"], trl, rgb["val"], val, K, lrs=(1e-1,), epochs=10)
    p_lab, _ = fit_seg_probe(trf, trl, vaf, val, K, lrs=(1e-1,), epochs=10)
    assert eval_seg_probe(p_rgb, rgb["test"], tel, K)["mIoU"] + 0.5 < eval_seg_probe(p_lab, tef, tel, K)["mIoU"]


def test_logits_upsampling_equals_conv_on_upsampled_features():
    torch.manual_seed(0)
    for probe in (SegProbe(6, 4), DepthProbe(6, "log")):
        probe.eval()
        with torch.no_grad():
            probe.bn.running_mean.normal_(); probe.bn.running_var.uniform_(0.5, 2.0); probe.conv.weight.normal_()
        f = torch.randn(2, 6, 3, 4)
        up = F.interpolate(f, size=(12, 16), mode="bilinear", align_corners=False)
        torch.testing.assert_close(probe(f, (12, 16)), probe(up), atol=1e-5, rtol=1e-5)


def test_ignored_pixels_never_contribute():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, K, 6, 8, generator=g, requires_grad=True), torch.randint(0, K, (2, 6, 8), generator=g)
    ign = torch.zeros(2, 6, 8, dtype=torch.bool); ign[:, :3] = True; ign[1, :, 6:] = True
    labels[ign] = IGNORE_INDEX
    loss = seg_loss(logits, labels); loss.backward()
    assert (logits.grad.permute(0, 2, 3, 1)[ign] == 0).all()                   # no gradient through ignored pixels
    ref = F.cross_entropy(logits.detach().permute(0, 2, 3, 1)[~ign], labels[~ign])   # CE over kept pixels, by hand
    torch.testing.assert_close(loss.detach(), ref)
    # metric: a probe on same-resolution features; scramble the features at ignored pixels -> identical metrics
    (trf, trl), (vaf, val), (tef, tel) = onehot_split(6, 0), onehot_split(4, 1), onehot_split(4, 2)
    probe, _ = fit_seg_probe(trf, trl, vaf, val, K, lrs=(1e-1,), epochs=3)
    tef2 = tef.clone(); m = (tel == IGNORE_INDEX)[:, None].expand_as(tef2)
    tef2[m] = torch.randn(int(m.sum()), generator=g) * 100
    assert eval_seg_probe(probe, tef2, tel, K) == eval_seg_probe(probe, tef, tel, K)
    assert not torch.equal(predict_seg(probe, tef2, tel.shape[-2:]), predict_seg(probe, tef, tel.shape[-2:]))  # it did change something


def test_invalid_depth_pixels_never_contribute():
    (trf, trd), (vaf, vad), (tef, ted) = logdepth_split(6, 0), logdepth_split(4, 1), logdepth_split(4, 2)
    probe, _ = fit_depth_probe(trf, trd, vaf, vad, lrs=(1e-1,), epochs=3)
    bad = torch.isinf(ted)
    tef2 = tef.clone(); m = bad[:, None].expand_as(tef2); tef2[m] = torch.randn(int(m.sum())) * 100
    assert eval_depth_probe(probe, tef2, ted) == eval_depth_probe(probe, tef, ted)
    pred = torch.randn(ted.shape, requires_grad=True)
    loss = depth_loss(pred, ted); loss.backward()
    assert (pred.grad[bad] == 0).all()
    torch.testing.assert_close(loss.detach(), ((pred.detach() - ted.log())[~bad] ** 2).mean())


# ----------------------------------------------------------------------------- depth

def test_depth_probe_reads_log_depth():
    (trf, trd), (vaf, vad), (tef, ted) = logdepth_split(12, 0), logdepth_split(6, 1), logdepth_split(6, 2)
    probe, hist = fit_depth_probe(trf, trd, vaf, vad, lrs=(1e-2, 1e-1), epochs=30)
    res = eval_depth_probe(probe, tef, ted)
    assert res["abs_rel"] < 0.03 and res["delta1"] > 0.99
    ref = depth_metrics(predict_depth(probe, tef, ted.shape[-2:]), ted, torch.isfinite(ted))
    assert res == pytest.approx(ref)
    nprobe, _ = fit_depth_probe(trf[:, 1:], trd, vaf[:, 1:], vad, lrs=(1e-2, 1e-1), epochs=10)  # noise channels only
    assert eval_depth_probe(nprobe, tef[:, 1:], ted)["abs_rel"] > 0.3


def layout_split(n, seed, h=4, w=6, up=4, C=3):
    "Noise features on an h×w token grid; log-depth is a fixed layout (a ramp over rows and columns) plus noise, upsampled."
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    log_layout = (0.4 * rows - 0.1 * cols).float()                               # [h, w], the same for every image
    up_ = lambda t: F.interpolate(t[:, None], scale_factor=up, mode="bilinear", align_corners=False)[:, 0]
    depth = up_(log_layout + 0.05 * torch.randn(n, h, w, generator=g)).exp()     # [n, h*up, w*up]
    return torch.randn(n, C, h, w, generator=g), depth, up_(log_layout[None])[0].exp()


@pytest.mark.parametrize("head", ["log", "bins"])
def test_position_bias_learns_the_layout_prior_that_noise_features_cannot_give(head):
    (trf, trd, lay), (vaf, vad, _), (tef, ted, _) = layout_split(16, 0), layout_split(8, 1), layout_split(8, 2)
    kw = dict(head=head, lrs=(1e-1,), epochs=30)
    probe, _ = fit_depth_probe(trf, trd, vaf, vad, positional=True, **kw)
    assert probe.pos.shape[-2:] == (4, 6)
    # independent truth: the best prediction that ignores the (noise) features is the layout itself
    best = depth_metrics(lay.expand_as(ted), ted, torch.isfinite(ted))
    got = eval_depth_probe(probe, tef, ted)
    assert got["rmse"] < best["rmse"] * 1.5 and got["delta1"] > 0.95
    plain, _ = fit_depth_probe(trf, trd, vaf, vad, **kw)
    assert eval_depth_probe(plain, tef, ted)["rmse"] > 3 * got["rmse"]


def test_positional_probes_reject_another_token_grid():
    (trf, trd, _), (vaf, vad, _) = layout_split(4, 0), layout_split(4, 1, h=5)
    with pytest.raises(ValueError, match="positional probes need the train token grid"):
        fit_depth_probe(trf, trd, vaf, vad, positional=True, epochs=1)
    probe, _ = fit_depth_probe(trf, trd, trf, trd, positional=True, epochs=1, lrs=(1e-2,))
    with pytest.raises(ValueError, match=r"position bias is for \(4, 6\)"):
        eval_depth_probe(probe, vaf, vad)


def test_bins_head_predicts_inside_its_range_and_learns():
    (trf, trd), (vaf, vad) = logdepth_split(6, 0, H=8, W=8), logdepth_split(4, 1, H=8, W=8)
    probe, hist = fit_depth_probe(trf, trd, vaf, vad, head="bins", n_bins=32, lrs=(1e-1,), epochs=15)
    assert hist["head"] == "bins" and probe.head == "bins"
    d = predict_depth(probe, torch.randn(3, 4, 8, 8) * 10, (8, 8))
    lo, hi = probe.log_bins.exp()[[0, -1]]
    assert (d >= lo * (1 - 1e-5)).all() and (d <= hi * (1 + 1e-5)).all()
    curve = [c["val_rmse"] for c in hist["curve"]]
    assert min(curve) < 0.6 * curve[0]


# ----------------------------------------------------------------------------- model selection

def test_selection_uses_val_even_when_test_prefers_another_lr():
    "Train and val follow one rule, test the opposite: the chosen lr must be the val-best, though test prefers the other."
    def split(n, seed, flip):
        g = torch.Generator().manual_seed(seed)
        f = torch.randn(n, 2, 6, 8, generator=g)
        y = (f[:, 0] > 0).long()
        return f, (1 - y) if flip else y
    (trf, trl), (vaf, val), (tef, tel) = split(8, 0, False), split(4, 1, False), split(4, 2, True)
    lrs = (1e-6, 1e-1)
    probe, hist = fit_seg_probe(trf, trl, vaf, val, 2, lrs=lrs, epochs=5)
    per_lr = {lr: fit_seg_probe(trf, trl, vaf, val, 2, lrs=(lr,), epochs=5)[0] for lr in lrs}
    val_score = {lr: segmentation_metrics(predict_seg(p, vaf, (6, 8)), val, 2)["mIoU"] for lr, p in per_lr.items()}
    test_score = {lr: segmentation_metrics(predict_seg(p, tef, (6, 8)), tel, 2)["mIoU"] for lr, p in per_lr.items()}
    assert max(test_score, key=test_score.get) == 1e-6 != max(val_score, key=val_score.get)   # the trap is set
    assert hist["best"]["lr"] == max(val_score, key=val_score.get) == 1e-1
    assert hist["best"]["val"]["mIoU"] == pytest.approx(max(c["val_mIoU"] for c in hist["curve"]))
    assert hist["selected_on"] == "val_mIoU"


def test_depth_selection_is_the_val_rmse_minimum():
    (trf, trd), (vaf, vad) = logdepth_split(8, 0), logdepth_split(4, 1)
    probe, hist = fit_depth_probe(trf, trd, vaf, vad, lrs=(1e-3, 1e-1), epochs=6)
    best = min(hist["curve"], key=lambda c: c["val_rmse"])
    assert (hist["best"]["lr"], hist["best"]["epoch"]) == (best["lr"], best["epoch"])
    # the returned head really is that checkpoint: its val RMSE, recomputed independently, matches
    rmse = depth_metrics(predict_depth(probe, vaf, vad.shape[-2:]), vad, torch.isfinite(vad))["rmse"]
    assert rmse == pytest.approx(best["val_rmse"], rel=1e-5)


def test_run_probes_never_passes_test_data_to_fitting(monkeypatch):
    g = torch.Generator().manual_seed(0)
    imgs = {s: torch.rand(n, 3, 16, 16, generator=g) for s, n in [("train", 6), ("val", 4), ("test", 4)]}
    sem = {s: torch.randint(-1, 3, (len(im), 16, 16), generator=g) for s, im in imgs.items()}
    dep = {s: torch.rand(len(im), 16, 16, generator=g) + 0.5 for s, im in imgs.items()}
    splits = {s: (imgs[s], sem[s], dep[s]) for s in imgs}
    events = []
    test_ids = {images_fingerprint(im[None]) for im in imgs["test"]}

    def sentinel(x):                                                  # a feature function that records its inputs
        events.append(("features", any(images_fingerprint(im[None]) in test_ids for im in x)))
        return F.avg_pool2d(x, 4)

    test_feats = F.avg_pool2d(imgs["test"], 4)
    for name in ("fit_seg_probe", "fit_depth_probe"):
        real = getattr(probes, name)
        def spy(*args, _real=real, _name=name, **kw):
            assert not any(isinstance(a, torch.Tensor) and a.shape == test_feats.shape and torch.equal(a, test_feats)
                           for a in list(args) + list(kw.values())), f"{_name} received the test features"
            events.append(("fit", _name)); return _real(*args, **kw)
        monkeypatch.setattr(probes, name, spy)
    out = run_probes(sentinel, splits, 3, seeds=(0, 1), seg_kwargs=dict(epochs=2), depth_kwargs=dict(epochs=2),
                     return_probes=True)
    fits = [i for i, e in enumerate(events) if e[0] == "fit"]
    test_calls = [i for i, e in enumerate(events) if e == ("features", True)]
    assert len(fits) == 4 and test_calls and max(fits) < min(test_calls)      # every fit before test is seen
    # reported test metrics are those of the returned heads on the test split
    # (the heads see features whitened with train statistics only: an independent NumPy whitening of the test features)
    tr = F.avg_pool2d(imgs["train"], 4).permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    lam, V = np.linalg.eigh(np.cov(tr.T, bias=True)); lam = lam.clip(0)
    Wn = V @ np.diag(1 / np.sqrt(lam + out["whiten"] * lam.mean())) @ V.T
    test_white = torch.einsum("nchw,kc->nkhw", test_feats - torch.tensor(tr.mean(0)).float().view(1, -1, 1, 1), torch.tensor(Wn).float())
    for row, heads in zip(out["seg"]["per_seed"], out["probes"]):
        ref = segmentation_metrics(predict_seg(heads["seg"], test_white, (16, 16)), seg_labels(sem["test"], 3), 3)
        assert {k: row[k] for k in SEG_KEYS} == pytest.approx(ref)


def test_whitening_matches_numpy_and_shrinks_each_direction():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(5, 5, generator=g) @ torch.diag(torch.tensor([5., 2., 1., .1, .01]))
    feats = torch.einsum("ck,nkhw->nchw", mix, torch.randn(40, 5, 3, 4, generator=g)) + 3.0
    X = feats.permute(0, 2, 3, 1).reshape(-1, 5).double().numpy()
    lam, V = np.linalg.eigh(np.cov(X.T, bias=True))
    for shrink in (1e-8, 0.1, 1.0):
        mu, W = features.fit_whitening(feats, shrink)
        ref = V @ np.diag(1 / np.sqrt(lam.clip(0) + shrink * lam.clip(0).mean())) @ V.T
        np.testing.assert_allclose(mu.numpy(), X.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(W.numpy(), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
        Y = features.apply_whitening(feats, mu, W).permute(0, 2, 3, 1).reshape(-1, 5).double().numpy()
        # in the covariance's eigenbasis, direction i keeps the variance λ_i / (λ_i + ε)
        cov_eig = V.T @ np.cov(Y.T, bias=True) @ V
        np.testing.assert_allclose(np.diag(cov_eig), lam / (lam + shrink * lam.mean()), atol=2e-3)
    with pytest.raises(ValueError, match="shrink: expected a positive number"): features.fit_whitening(feats, -1.0)
    with pytest.raises(ValueError, match="whitening was fitted on 5"): features.apply_whitening(feats[:, :4], mu, W)


def test_whitening_rescues_an_ill_conditioned_copy_of_good_features():
    "The same information, badly conditioned: without whitening a short probe falls short; with it, it does not."
    trf, trl = onehot_split(12, 0); vaf, val_ = onehot_split(6, 1); tef, tel = onehot_split(6, 2)
    Q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(5)))[0]
    M = Q @ torch.diag(torch.logspace(0, -3, 8))
    mix = lambda f: torch.einsum("ck,nkhw->nchw", M, f) + 4.0
    splits = {"train": (None, trl, None), "val": (None, val_, None), "test": (None, tel, None)}
    feats = {"train": mix(trf), "val": mix(vaf), "test": mix(tef)}
    kw = dict(seeds=(0,), depth=False, features=feats, seg_kwargs=dict(epochs=3, lrs=(1e-2,)))
    raw, white = run_probes(None, splits, K, whiten=None, **kw), run_probes(None, splits, K, whiten=1e-3, **kw)
    assert raw["whiten"] is None and white["whiten"] == 1e-3
    assert white["seg"]["mean"]["mIoU"] > raw["seg"]["mean"]["mIoU"] + 0.2


# ----------------------------------------------------------------------------- seeds, summary, table

def test_mean_std_over_seeds_and_table_match_numpy():
    (trf, trl), (vaf, val), (tef, tel) = onehot_split(6, 0), onehot_split(4, 1), onehot_split(4, 2)
    trf, vaf, tef = (f + torch.randn(f.shape, generator=torch.Generator().manual_seed(i)) * 2 for i, f in enumerate((trf, vaf, tef)))
    (trdf, trd), (vadf, vad), (tedf, ted) = logdepth_split(6, 0), logdepth_split(4, 1), logdepth_split(4, 2)
    feats = {"train": torch.cat([trf, trdf], 1), "val": torch.cat([vaf, vadf], 1), "test": torch.cat([tef, tedf], 1)}
    splits = {"train": (None, trl, trd), "val": (None, val, vad), "test": (None, tel, ted)}
    kw = dict(features=feats, seg_kwargs=dict(epochs=3, lrs=(1e-2,)), depth_kwargs=dict(epochs=3, lrs=(1e-2,)))
    out = run_probes(None, splits, K, seeds=(0, 1, 2), **kw)
    assert out["ddof"] == 0 and json.loads(json.dumps(out)) == out                          # plain numbers, JSON-ready
    for probe, keys in (("seg", SEG_KEYS), ("depth", DEPTH_KEYS)):
        for k in keys:
            vals = np.array([r[k] for r in out[probe]["per_seed"]])
            assert out[probe]["mean"][k] == pytest.approx(np.mean(vals), abs=1e-12)
            assert out[probe]["std"][k] == pytest.approx(np.std(vals), abs=1e-12)        # numpy default: ddof=0
    assert len({r["mIoU"] for r in out["seg"]["per_seed"]}) > 1                             # the seeds really differ
    cells = format_table({"x": out}).splitlines()[2].split("|")[2:-1]
    expect = []
    for probe, k, scale, d in [("seg", "mIoU", 100, 1), ("seg", "mAcc", 100, 1), ("seg", "aAcc", 100, 1),
                               ("depth", "rmse", 1, 3), ("depth", "abs_rel", 1, 3), ("depth", "delta1", 100, 1)]:
        v = np.array([r[k] for r in out[probe]["per_seed"]]) * scale
        expect.append(f"{np.mean(v):.{d}f} ± {np.std(v):.{d}f}")
    assert [c.strip() for c in cells] == expect
    s1 = summarize(out["seg"]["per_seed"], SEG_KEYS, ddof=1)
    assert s1["std"]["mIoU"] == pytest.approx(np.std([r["mIoU"] for r in out["seg"]["per_seed"]], ddof=1))
    assert "| – | – | – |" in format_table({"seg only": {"seg": out["seg"]}})


def test_fitting_is_deterministic_per_seed_and_leaves_global_rng_alone():
    (trf, trl), (vaf, val) = onehot_split(6, 0), onehot_split(4, 1)
    trf = trf + torch.randn(trf.shape, generator=torch.Generator().manual_seed(9))
    run = lambda seed: fit_seg_probe(trf, trl, vaf, val, K, lrs=(1e-2, 1e-1), epochs=3, batch_size=4, seed=seed)
    torch.manual_seed(42); (p1, h1), after = run(0), torch.rand(3)
    torch.manual_seed(42); (p2, h2), ref = run(0), torch.rand(3)
    torch.manual_seed(42); ref2 = torch.rand(3)
    assert torch.equal(after, ref2) and torch.equal(ref, ref2)           # the caller's random stream is untouched
    assert h1 == h2 and all(torch.equal(a, b) for a, b in zip(p1.state_dict().values(), p2.state_dict().values()))
    p3, _ = run(1)
    assert not torch.equal(p1.conv.weight, p3.conv.weight)


# ----------------------------------------------------------------------------- features and validation

def test_extract_features_batches_no_grad_and_eval_mode():
    class Net(nn.Module):
        def __init__(self):
            super().__init__(); self.conv = nn.Conv2d(3, 4, 2, stride=2); self.drop = nn.Dropout(0.5)
        def forward(self, x): return self.drop(self.conv(x))
    net = Net().train()
    x = torch.rand(7, 3, 8, 8)
    f = extract_features(net, x, batch_size=3)
    assert net.training                                                    # mode restored
    with torch.no_grad(): ref = net.conv(x)                                # eval mode: dropout is the identity
    torch.testing.assert_close(f, ref)
    assert not f.requires_grad and f.device.type == "cpu" and f.dtype == torch.float32
    both = extract_features(concat_feature_fns(rgb_feature_fn(2), net), x)
    torch.testing.assert_close(both, torch.cat([F.avg_pool2d(x, 2), ref], 1))


def test_feature_cache_hits_and_misses(tmp_path):
    calls = []
    fn = lambda x: (calls.append(len(x)), F.avg_pool2d(x, 2))[1]
    x = torch.rand(4, 3, 8, 8)
    p = tmp_path / "f.safetensors"
    a = cached_features(fn, x, p, key="m"); b = cached_features(fn, x, p, key="m")
    assert torch.equal(a, b) and len(calls) == 1
    cached_features(fn, x, p, key="other"); assert len(calls) == 2
    cached_features(fn, x + 0.0 * x, p, key="other"); assert len(calls) == 2          # same values: a hit
    x2 = x.clone(); x2[0, 0, 0, 0] = 1 - x2[0, 0, 0, 0]
    cached_features(fn, x2, p, key="other"); assert len(calls) == 3                   # one pixel differs: a miss
    feats, meta = load_features(p)
    assert torch.equal(feats, F.avg_pool2d(x2, 2)) and meta["key"] == "other"
    with pytest.raises(ValueError, match="expected a .safetensors"): save_features(tmp_path / "f.pt", feats)


def test_input_validation_messages():
    (trf, trl), (vaf, val) = onehot_split(4, 0), onehot_split(2, 1)
    with pytest.raises(ValueError, match="train_labels: expected 4 maps"): fit_seg_probe(trf, trl[:3], vaf, val, K)
    with pytest.raises(ValueError, match=r"val_labels: class ids must be in \[0, 5\)"):
        fit_seg_probe(trf, trl, vaf, val.masked_fill(val == 0, 7), K)
    bad = trf.clone(); bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="train_feats: contains NaN"): fit_seg_probe(bad, trl, vaf, val, K)
    with pytest.raises(ValueError, match="num_classes"): fit_seg_probe(trf, trl, vaf, val, 0)
    with pytest.raises(ValueError, match="every pixel is ignored"): fit_seg_probe(trf, trl * 0 + 255, vaf, val, K)
    with pytest.raises(ValueError, match="lrs"): fit_seg_probe(trf, trl, vaf, val, K, lrs=(-1.0,))
    with pytest.raises(ValueError, match="optimizer"): fit_seg_probe(trf, trl, vaf, val, K, optimizer="lbfgs")
    with pytest.raises(ValueError, match="val_feats: expected 8 channels"): fit_seg_probe(trf, trl, vaf[:, :2], val, K)
    (tdf, tdd), (vdf, vdd) = logdepth_split(4, 0), logdepth_split(2, 1)
    with pytest.raises(ValueError, match="val_depth: no valid pixel"): fit_depth_probe(tdf, tdd, vdf, vdd * math.inf)
    with pytest.raises(ValueError, match="train_depth: expected 4 maps"): fit_depth_probe(tdf, tdd[:1], vdf, vdd)
    with pytest.raises(ValueError, match="images: expected values in"): extract_features(rgb_feature_fn(2), torch.rand(2, 3, 4, 4) * 3)
    with pytest.raises(ValueError, match=r"images: expected shape \[\*, 3"): extract_features(rgb_feature_fn(2), torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="returned NaN"): extract_features(lambda x: x / 0 * 0, torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expected a float tensor \[2, C, h, w\]"): extract_features(lambda x: x[0], torch.rand(2, 3, 4, 4))
    splits = {"train": (torch.rand(3, 3, 4, 4), torch.zeros(2, 4, 4), torch.ones(2, 4, 4)), "val": (None, None, None), "test": (None, None, None)}
    with pytest.raises(ValueError, match=r"splits\['train'\]: 3 feature maps but 2 label maps"):
        run_probes(rgb_feature_fn(2), splits, 3)
    with pytest.raises(ValueError, match="splits: missing the 'test' split"): run_probes(rgb_feature_fn(2), {"train": 1, "val": 2}, 3)
    with pytest.raises(ValueError, match="rows: expected a non-empty dict"): format_table({})


def test_view_pairs_and_run_consistency_aggregation():
    from condense_nb.diagnostics import view_pairs, run_consistency
    from condense_nb.metrics import multiview_consistency
    from condense_nb import scenes, cameras, rooms
    assert view_pairs(6, 1, 10) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    W, H = 40, 30
    K = cameras.intrinsics(75, W, H)
    sc = rooms.make_room(3)
    Vs = cameras.inroom_path(sc.meta["size"], 4, seed=1)
    outs = [scenes.render(sc, K, v, W, H, shadows=False) for v in Vs]
    room = dict(rgb=torch.stack([o["rgb"].permute(2, 0, 1) for o in outs]), depth=torch.stack([o["depth"] for o in outs]),
                K=K.expand(4, 3, 3), viewmats=Vs)
    fn = lambda x: F.avg_pool2d(x, 5)
    res = run_consistency(fn, [room], seeds=(0, 1), gap=1, per_room=3, max_points=100)
    # independent aggregation: the n-weighted cosine and the mean accuracy over the same pairs
    feats = fn(room["rgb"])
    for row in res["per_seed"]:
        rs = [multiview_consistency(feats[a], feats[b], room["depth"][a], K, Vs[a], room["depth"][b], K, Vs[b],
                                    max_points=100, generator=torch.Generator().manual_seed(row["seed"])) for a, b in view_pairs(4, 1, 3)]
        assert abs(row["cos_sim"] - np.average([r["cos_sim"] for r in rs], weights=[r["n"] for r in rs])) < 1e-9
        assert abs(row["corr_acc"] - np.mean([r["corr_acc"] for r in rs])) < 1e-12
    assert abs(res["mean"]["corr_acc"] - np.mean([r["corr_acc"] for r in res["per_seed"]])) < 1e-12
