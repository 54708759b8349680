"""Tests for condense_nb.point_eval: the linear SVM (100 % on separable features, C chosen on val and never on test,
agreement with a direct scikit-learn fit), frozen global features (batch-size invariance, eval mode), fine-tuning
selection by val only (a sentinel that records every split evaluation), precise BatchNorm, the augmentation,
mean ± std helpers and bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import condense_nb.point_eval as pe
from condense_nb.point_eval import (svm_eval, extract_global_features, finetune_classifier, finetune_preset, FinetuneConfig,
                                    rotate_scale, recalibrate_bn, evaluate, mean_std, fmt_mean_std, beats)
from condense_nb.mae import PointMAE, from_preset, global_feature




def _blobs(n, seed, d=16, k=3):
    r = np.random.default_rng(seed)
    y = np.arange(n) % k
    return 10 * np.eye(k, d)[y] + r.normal(0, 0.5, (n, d)), y


def _disagreeing():
    "Train: 20 class-0 points near -1, 5 class-1 near +1. Val: class-0 at 0.3 (only a tiny-C majority SVM is right);"
    "test: class-1 at +1 (only a large-C separating SVM is right)."
    r = np.random.default_rng(0)
    Xtr = np.concatenate([r.normal(-1, 0.1, (20, 2)), r.normal(1, 0.1, (5, 2))]); ytr = np.r_[np.zeros(20), np.ones(5)].astype(int)
    Xva = 0.3 + r.normal(0, 0.02, (6, 2)); Xte = 1.0 + r.normal(0, 0.05, (6, 2))
    return Xtr, ytr, Xva, np.zeros(6, int), Xte, np.ones(6, int)


def _clouds(n_per_class, seed, N=96):
    "Three synthetic classes: noisy spheres, cubes (surface), and flat discs; labels 0, 1, 2 interleaved."
    g = torch.Generator().manual_seed(seed)
    out, labels = [], []
    for i in range(n_per_class):
        for c in range(3):
            x = torch.randn(N, 3, generator=g)
            if c == 0: x = x / x.norm(dim=-1, keepdim=True)
            elif c == 1: x = x / x.abs().amax(-1, keepdim=True)
            else: x = torch.cat([x[:, :2] / x[:, :2].norm(dim=-1, keepdim=True) * torch.rand(N, 1, generator=g), 0.05 * x[:, 2:]], 1)
            out.append(x * (0.8 + 0.4 * torch.rand(1, generator=g))); labels.append(c)
    return torch.stack(out), torch.tensor(labels)


# ------------------------------------------------------------------------------------------------ SVM
def test_svm_separable_is_perfect():
    r = svm_eval(*_blobs(60, 0), *_blobs(30, 1), *_blobs(30, 2))
    assert r["val_acc"] == 1.0 and r["test_acc"] == 1.0
    assert r["C"] == min(pe.DEFAULT_CS)                                   # all C tie on val: the smallest is kept


def test_svm_c_is_chosen_on_val_not_test():
    data = _disagreeing()
    Xtr, ytr, Xva, yva, Xte, yte = data
    # independent check that the two splits really disagree: a direct sklearn fit at each C
    sc = StandardScaler().fit(Xtr)
    acc = {C: [float((SVC(kernel="linear", C=C).fit(sc.transform(Xtr), ytr).predict(sc.transform(X)) == y).mean())
               for X, y in ((Xva, yva), (Xte, yte))] for C in (1e-3, 10.0)}
    assert acc[1e-3] == [1.0, 0.0] and acc[10.0] == [0.0, 1.0]
    r = svm_eval(*data, Cs=(10.0, 1e-3))
    assert (r["C"], r["val_acc"], r["test_acc"]) == (1e-3, 1.0, 0.0)      # val decided; test would have picked 10
    assert r["val_accs"] == {"0.001": 1.0, "10.0": 0.0}
    # swapping the roles of val and test flips the choice: the selection follows whatever is passed as val
    r2 = svm_eval(Xtr, ytr, Xte, yte, Xva, yva, Cs=(10.0, 1e-3))
    assert (r2["C"], r2["test_acc"]) == (10.0, 0.0)


def test_svm_matches_direct_sklearn_fits():
    Xtr, ytr = _blobs(40, 3, d=5); Xva, yva = _blobs(20, 4, d=5); Xte, yte = _blobs(20, 5, d=5)
    Xtr = Xtr + np.random.default_rng(9).normal(0, 4, Xtr.shape)          # overlapping classes: C matters
    for standardize in (False, True):
        r = svm_eval(Xtr, ytr, Xva, yva, Xte, yte, Cs=(0.01, 1.0), standardize=standardize)
        tf = (StandardScaler().fit(Xtr).transform if standardize else (lambda x: x))
        m = SVC(kernel="linear", C=r["C"]).fit(tf(Xtr), ytr)
        assert r["test_acc"] == float((m.predict(tf(Xte)) == yte).mean())
    r = svm_eval(Xtr, ytr, Xva, yva, Xte, yte, Cs=(0.01, 1.0), refit="train+val")
    Xtv, ytv = np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva])
    sc = StandardScaler().fit(Xtv)
    assert r["test_acc"] == float((SVC(kernel="linear", C=r["C"]).fit(sc.transform(Xtv), ytv).predict(sc.transform(Xte)) == yte).mean())


def test_svm_bad_input():
    z3, l2 = np.zeros((2, 3)), [0, 1]
    with pytest.raises(ValueError, match="val_feats: expected shape"): svm_eval(np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((2, 4)), l2, z3, l2)
    with pytest.raises(ValueError, match="train_labels: expected 4 integer"): svm_eval(np.zeros((4, 3)), [0, 1, 0], z3, l2, z3, l2)
    with pytest.raises(ValueError, match="train_labels: expected 4 integer"): svm_eval(np.zeros((4, 3)), [0.0, 1.0, 0.0, 1.0], z3, l2, z3, l2)
    with pytest.raises(ValueError, match="at least 2 classes"): svm_eval(np.zeros((4, 3)), [1, 1, 1, 1], z3, l2, z3, l2)
    with pytest.raises(ValueError, match="test_feats: contains NaN"): svm_eval(np.zeros((4, 3)), [0, 1, 0, 1], z3, l2, np.full((2, 3), np.inf), l2)
    with pytest.raises(ValueError, match="Cs: expected"): svm_eval(*_blobs(6, 0), *_blobs(3, 1), *_blobs(3, 2), Cs=())
    with pytest.raises(ValueError, match="Cs: expected"): svm_eval(*_blobs(6, 0), *_blobs(3, 1), *_blobs(3, 2), Cs=(0.0,))
    with pytest.raises(ValueError, match="refit: unknown value"): svm_eval(*_blobs(6, 0), *_blobs(3, 1), *_blobs(3, 2), refit="test")
    with pytest.raises(ValueError, match="class labels must be >= 0"): svm_eval(np.zeros((4, 3)), [0, 1, 0, -1], z3, l2, z3, l2)


# ------------------------------------------------------------------------------------------------ features
def test_global_features_eval_mode_and_batch_invariance():
    torch.manual_seed(0)
    mae = PointMAE(from_preset("tiny")); mae.train()
    X, _ = _clouds(3, 0)
    f1 = extract_global_features(mae, X, "max", batch_size=1)
    f9 = extract_global_features(mae, X, "max", batch_size=9)
    assert mae.training                                                     # restored
    torch.testing.assert_close(f1, f9, atol=1e-5, rtol=1e-5)
    mae.eval()
    with torch.no_grad(): ref = global_feature(mae, X, "concat")
    torch.testing.assert_close(extract_global_features(mae.encoder, X, "concat"), ref)
    assert ref.shape == (9, 2 * mae.cfg.dim)
    with pytest.raises(ValueError, match="fewer than the encoder's 32 tokens"): extract_global_features(mae, X[:, :10])
    with pytest.raises(ValueError, match="pool: unknown value"): extract_global_features(mae, X, pool="avg")
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int \(an int >= 1\)"): extract_global_features(mae, X, batch_size=0)
    with pytest.raises(ValueError, match="points: contains NaN"): extract_global_features(mae, X.clone().fill_(float("nan")))


# ------------------------------------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def ft_data():
    return _clouds(4, 1), _clouds(2, 2), _clouds(3, 3)                    # 12 train, 6 val, 9 test clouds


def _state_sum(model):
    return sum(float(v.double().sum()) for v in model.state_dict().values() if v.is_floating_point())


def test_finetune_selects_on_val_only(ft_data, monkeypatch):
    train, val, test = ft_data
    calls = []                                                             # (split by size, epoch count so far, weights fingerprint)
    real = pe.evaluate
    def spy(model, points, labels, batch_size=64, per_sample=False):
        out = real(model, points, labels, batch_size, per_sample)
        calls.append(({12: "train", 6: "val", 9: "test"}[len(points)], _state_sum(model), out))
        return out
    monkeypatch.setattr(pe, "evaluate", spy)
    arch = from_preset("tiny")
    cfg = finetune_preset("tiny", epochs=5, batch_size=4)
    res = finetune_classifier(None, train, val, test, cfg, seeds=(0, 1), arch=arch)
    for k, run in enumerate(res["runs"]):
        mine = calls[k * 6:(k + 1) * 6]
        assert [c[0] for c in mine] == ["val"] * 5 + ["test"]              # test scored once, after training
        hist = run["history"]
        assert [h["val_acc"] for h in hist] == [c[2][0] for c in mine[:5]]
        best = max(range(5), key=lambda e: (hist[e]["val_acc"], -hist[e]["val_loss"], -e))
        assert run["best_epoch"] == best
        assert mine[5][1] == pytest.approx(mine[best][1], rel=1e-9, abs=1e-9)   # the test split saw the best-val weights
        assert run["test_acc"] == mine[5][2][0] and run["test_correct"] == mine[5][2][2]
        assert sum(run["test_correct"]) == round(run["test_acc"] * len(test[1]))     # the hits add up to the accuracy
    # a different test split changes nothing but the test number
    monkeypatch.setattr(pe, "evaluate", real)
    other = (test[0].flip(1) * 0.5, (test[1] + 1) % 3)
    res2 = finetune_classifier(None, train, val, other, cfg, seeds=(0, 1), arch=arch)
    for a, b in zip(res["runs"], res2["runs"]):
        assert a["best_epoch"] == b["best_epoch"]
        assert [h["val_acc"] for h in a["history"]] == [h["val_acc"] for h in b["history"]]
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_finetune_is_deterministic_and_leaves_the_encoder_alone(ft_data):
    train, val, test = ft_data
    torch.manual_seed(0)
    mae = PointMAE(from_preset("tiny"))
    before = {k: v.clone() for k, v in mae.state_dict().items()}
    cfg = finetune_preset("tiny", epochs=2, batch_size=4)
    a = finetune_classifier(mae, train, val, test, cfg, seeds=(3,))
    b = finetune_classifier(mae, train, val, test, cfg, seeds=(3,))
    assert all(torch.equal(before[k], v) for k, v in mae.state_dict().items())
    drop = lambda hist: [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in hist]
    assert drop(a["runs"][0]["history"]) == drop(b["runs"][0]["history"])
    assert a["test_acc"]["mean"] == b["test_acc"]["mean"] and 0 <= a["test_acc"]["mean"] <= 1
    assert a["test_acc"]["std"] == 0.0 and a["n_classes"] == 3


def test_finetune_bad_input(ft_data):
    train, val, test = ft_data
    cfg = finetune_preset("tiny", epochs=1, batch_size=4)
    mae = PointMAE(from_preset("tiny"))
    with pytest.raises(ValueError, match="arch: training from scratch"): finetune_classifier(None, train, val, test, cfg)
    with pytest.raises(ValueError, match="cfg: expected a FinetuneConfig"): finetune_classifier(mae, train, val, test, {"epochs": 1})
    with pytest.raises(ValueError, match="val: expected a pair"): finetune_classifier(mae, train, val[0], test, cfg)
    with pytest.raises(ValueError, match="test labels: expected 9 integer"): finetune_classifier(mae, train, val, (test[0], test[1][:4]), cfg)
    with pytest.raises(ValueError, match="n_classes: 2 is too few"): finetune_classifier(mae, train, val, test, cfg, n_classes=2)
    with pytest.raises(ValueError, match="train points: clouds have N=20 points"): finetune_classifier(mae, (train[0][:, :20], train[1]), val, test, cfg)
    with pytest.raises(ValueError, match=r"seeds: expected a non-negative int \(an int >= 0\)"): finetune_classifier(mae, train, val, test, cfg, seeds=(-1,))
    with pytest.raises(ValueError, match="FinetuneConfig.batch_size"): FinetuneConfig(batch_size=1)
    with pytest.raises(ValueError, match="FinetuneConfig.scale"): FinetuneConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="unknown FinetuneConfig field"): finetune_preset("tiny", lr_max=1.0)
    with pytest.raises(ValueError, match="preset: unknown value 'huge'"): finetune_preset("huge")


# ------------------------------------------------------------------------------------------------ pieces
def test_rotate_scale_is_a_rotation_about_z_then_axis_scale():
    p = torch.randn(4, 50, 3, dtype=torch.float64)
    q = rotate_scale(p, torch.Generator().manual_seed(0), scale=None)
    torch.testing.assert_close(q[..., 2], p[..., 2])
    torch.testing.assert_close(q[..., :2].norm(dim=-1), p[..., :2].norm(dim=-1))
    torch.testing.assert_close(torch.cdist(q, q), torch.cdist(p, p))        # rigid
    s = rotate_scale(p, torch.Generator().manual_seed(0), rotate=False, scale=(0.9, 1.1)) / p
    assert torch.allclose(s, s[:, :1].expand_as(s)) and ((s >= 0.9) & (s <= 1.1)).all()   # one factor per axis and cloud


def test_recalibrate_bn_gives_exact_batch_statistics():
    lin, bn = nn.Linear(3, 4), nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Flatten(0, 1), lin, bn)
    x = torch.randn(6, 5, 3)
    bn.running_var.fill_(7.0); model.eval()
    assert recalibrate_bn(model, x, batch_size=3) == 1
    with torch.no_grad(): h = [lin(x[:3].flatten(0, 1)), lin(x[3:].flatten(0, 1))]
    torch.testing.assert_close(bn.running_mean, (h[0].mean(0) + h[1].mean(0)) / 2)        # average of the two batches
    torch.testing.assert_close(bn.running_var, (h[0].var(0) + h[1].var(0)) / 2)
    assert not model.training and bn.momentum == 0.1


def test_evaluate_accuracy_against_hand_count():
    class Fixed(nn.Module):
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
        def forward(self, x): return torch.stack([x[:, 0, 0], -x[:, 0, 0]], -1) + self.w   # class 0 iff x > 0
    x = torch.tensor([1.0, -1.0, 2.0, -3.0, 0.5]).view(5, 1, 1).expand(5, 1, 3)
    acc, loss = evaluate(Fixed(), x, torch.tensor([0, 1, 1, 1, 1]), batch_size=2)
    assert acc == pytest.approx(3 / 5)
    ref = torch.nn.functional.cross_entropy(torch.stack([x[:, 0, 0], -x[:, 0, 0]], -1), torch.tensor([0, 1, 1, 1, 1]))
    assert loss == pytest.approx(float(ref), rel=1e-6)
    assert evaluate(Fixed(), x, torch.tensor([0, 1, 1, 1, 1]), batch_size=2, per_sample=True)[2] == [1, 1, 0, 1, 0]   # by hand


def test_mean_std_and_beats():
    m, s = mean_std([0.80, 0.82, 0.84])
    assert m == pytest.approx(0.82) and s == pytest.approx(math.sqrt((0.02 ** 2 * 2) / 3))
    assert mean_std([1.0, 3.0], ddof=1)[1] == pytest.approx(math.sqrt(2))
    assert math.isnan(mean_std([1.0], ddof=1)[1])
    assert fmt_mean_std([0.5, 0.5]) == "50.0 ± 0.0"
    b = beats([0.9, 0.9, 0.9], [0.8, 0.85, 0.9])
    assert b["diff"] == pytest.approx(0.05) and b["margin"] == pytest.approx(np.std([0.8, 0.85, 0.9])) and b["beats"]
    assert not beats([0.9, 0.7], [0.8, 0.8])["beats"]                       # equal means
    assert beats([0.86, 0.90], [0.85, 0.85])["beats"]                       # +3 points, margin 2
    assert not beats([0.84, 0.92], [0.85, 0.85])["beats"]                   # +3 points, margin 4
    with pytest.raises(ValueError, match="values: expected a list of numbers"): mean_std(["a"])
    with pytest.raises(ValueError, match="values: contains NaN"): mean_std([float("inf")])
