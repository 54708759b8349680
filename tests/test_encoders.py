"Tests for condense_nb.encoders: dense maps from timm ViTs, normalisation, local weights, save/load."
import os
import pytest
import torch
import timm
import safetensors.torch as st
from timm.layers import resample_abs_pos_embed
from condense_nb.encoders import DenseEncoder, load_weights, save_encoder, load_encoder, load_teacher, IMAGENET_MEAN, IMAGENET_STD
from condense_nb.metrics import pca_rgb

TINY = dict(embed_dim=32, depth=2, num_heads=2)        # keeps every model a few hundred kB
NAME = "vit_tiny_patch16_224"


def manual_vit_tokens(m, x):  # x [B,3,H,W] (already normalised) at the model's own size -> [B, P+h*w, C]
    "A ViT forward written out by hand (conv patchify, prefix tokens, pos-embed, blocks, norm)."
    B = x.shape[0]
    p = m.patch_embed.proj(x).flatten(2).transpose(1, 2)            # [B, h*w, C], row-major
    prefix = [t.expand(B, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
    if m.no_embed_class: seq = torch.cat(prefix + [p + m.pos_embed], 1)
    else: seq = torch.cat(prefix + [p], 1) + m.pos_embed
    for blk in m.blocks: seq = blk(seq)
    return m.norm(seq)


@pytest.mark.parametrize("kw,size,P", [
    (dict(img_size=32), (32, 48), 1),                                   # patch 16, CLS only
    (dict(img_size=64, patch_size=8, reg_tokens=4), (64, 64), 5),       # CLS + 4 registers
    (dict(img_size=64, patch_size=8, class_token=False, global_pool="avg"), (40, 64), 0),  # no prefix at all
    (dict(img_size=64, patch_size=8, reg_tokens=4, no_embed_class=True), (24, 56), 5),
])
def test_shapes_and_prefix_tokens(kw, size, P):
    enc = DenseEncoder(NAME, **kw, **TINY)
    H, W = size; p = enc.patch_size
    assert enc.num_prefix_tokens == P and enc.embed_dim == 32 and isinstance(p, int)
    assert enc(torch.rand(2, 3, H, W)).shape == (2, 32, H // p, W // p)


def test_dinov2_reg_prefix_and_upsample():
    enc = DenseEncoder("vit_small_patch14_reg4_dinov2", img_size=56, depth=1, upsample=True)
    assert (enc.num_prefix_tokens, enc.patch_size, enc.embed_dim) == (5, 14, 384)
    assert enc(torch.rand(1, 3, 42, 70)).shape == (1, 384, 42, 70)
    enc.upsample = False
    assert enc(torch.rand(1, 3, 42, 70)).shape == (1, 384, 3, 5)


def test_upsample_is_bilinear_of_dense():
    enc = DenseEncoder(NAME, img_size=32, patch_size=8, **TINY)
    x = torch.rand(1, 3, 32, 24)
    d = enc(x); enc.upsample = True
    torch.testing.assert_close(enc(x), torch.nn.functional.interpolate(d, (32, 24), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("kw", [dict(), dict(reg_tokens=4), dict(reg_tokens=2, no_embed_class=True)])
def test_dense_equals_hand_written_forward(kw):
    torch.manual_seed(0)
    m = timm.create_model(NAME, img_size=32, patch_size=8, num_classes=0, **kw, **TINY).eval()
    enc = DenseEncoder(m)
    x = torch.rand(2, 3, 32, 32)
    xn = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    tok = manual_vit_tokens(m, xn)
    P, d = m.num_prefix_tokens, enc(x)
    for i in range(4):
        for j in range(4):
            torch.testing.assert_close(d[:, :, i, j], tok[:, P + 4 * i + j])


def test_dense_non_square_matches_forward_intermediates():
    torch.manual_seed(0)
    enc = DenseEncoder(NAME, img_size=32, patch_size=8, reg_tokens=4, **TINY)
    x = torch.rand(1, 3, 24, 56)
    xn = (x - enc.mean) / enc.std
    _, inter = enc.model.forward_intermediates(xn, indices=[-1], norm=True, output_fmt="NCHW")
    torch.testing.assert_close(enc(x), inter[0])


def test_normalisation_applied():
    torch.manual_seed(0)
    m = timm.create_model(NAME, img_size=32, patch_size=8, num_classes=0, dynamic_img_size=True, **TINY).eval()
    x = torch.rand(2, 3, 32, 32)
    def ref(mean, std):
        return m.forward_features((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))[:, 1:]
    to_map = lambda t: t.reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(DenseEncoder(m)(x), to_map(ref(IMAGENET_MEAN, IMAGENET_STD)))
    torch.testing.assert_close(DenseEncoder(m, normalize="model")(x), to_map(ref((.5, .5, .5), (.5, .5, .5))))
    torch.testing.assert_close(DenseEncoder(m, normalize=((.1, .2, .3), (.4, .5, .6)))(x), to_map(ref((.1, .2, .3), (.4, .5, .6))))
    assert not torch.allclose(DenseEncoder(m)(x), to_map(m.forward_features(x)[:, 1:]))   # raw input differs
    with pytest.raises(ValueError, match="normalize"): DenseEncoder(m, normalize="zscore")


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_local_weights_round_trip_resamples_pos_embed(tmp_path, fmt):
    torch.manual_seed(1)
    src = timm.create_model(NAME, img_size=64, patch_size=8, reg_tokens=2, **TINY)   # with a 1000-class head
    sd = {k: v.detach().clone() for k, v in src.state_dict().items()}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors": st.save_file(sd, path)
    elif fmt == "pth": torch.save(sd, path)
    else: torch.save(dict(state_dict=sd, epoch=3, lr=0.1), path)               # a training checkpoint
    enc = DenseEncoder(NAME, weights=path, img_size=96, patch_size=8, reg_tokens=2, **TINY)
    got = enc.model.state_dict()
    expect_pos = resample_abs_pos_embed(sd["pos_embed"], new_size=(12, 12), num_prefix_tokens=3)
    assert got["pos_embed"].shape == (1, 3 + 144, 32)
    torch.testing.assert_close(got["pos_embed"], expect_pos)
    assert set(got) == set(sd) - {"head.weight", "head.bias"}
    for k in got:
        if k != "pos_embed": assert torch.equal(got[k], sd[k]), k
    assert enc(torch.rand(1, 3, 96, 96)).shape == (1, 32, 12, 12)


def test_weights_for_another_architecture(tmp_path):
    other = timm.create_model(NAME, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    st.save_file(other.state_dict(), tmp_path / "deep.safetensors")
    with pytest.raises(ValueError, match=r"another architecture.*unexpected keys: blocks\.2"):
        DenseEncoder(NAME, weights=tmp_path / "deep.safetensors", img_size=32, patch_size=8, **TINY)
    with pytest.raises(ValueError, match=r"missing keys: blocks\.3\.norm1\.weight.*\(12 in all\)"):
        DenseEncoder(NAME, weights=tmp_path / "deep.safetensors", img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
    wide = timm.create_model(NAME, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    st.save_file(wide.state_dict(), tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch: cls_token: file \[1, 1, 64\] vs model \[1, 1, 32\]"):
        DenseEncoder(NAME, weights=tmp_path / "wide.safetensors", img_size=32, patch_size=8, **TINY)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(ValueError, match="another architecture.*missing keys.*unexpected keys"):
        DenseEncoder(NAME, weights=tmp_path / "cnn.pt", img_size=32, patch_size=8, **TINY)


_SIDE_EFFECT = []
def _mark(): _SIDE_EFFECT.append("ran"); return torch.zeros(1)
class _Evil:
    def __reduce__(self): return (_mark, ())


def test_bad_weight_files(tmp_path):
    kw = dict(img_size=32, patch_size=8, **TINY)
    with pytest.raises(ValueError, match="file not found"): DenseEncoder(NAME, weights=tmp_path / "nope.safetensors", **kw)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected one of"): DenseEncoder(NAME, weights=tmp_path / "w.npz", **kw)
    for name in ["junk.safetensors", "junk.pth"]:
        (tmp_path / name).write_bytes(os.urandom(256))
        with pytest.raises(ValueError, match="could not read"): DenseEncoder(NAME, weights=tmp_path / name, **kw)
    # a pickle that would run code when unpickled: weights_only=True must refuse it before it runs
    m = timm.create_model(NAME, num_classes=0, **kw)
    torch.save({**m.state_dict(), "x": _Evil()}, tmp_path / "evil.pth")
    assert torch.load(tmp_path / "evil.pth", weights_only=False)["x"] is not None and _SIDE_EFFECT == ["ran"]  # it is armed
    _SIDE_EFFECT.clear()
    with pytest.raises(ValueError, match="could not read"): DenseEncoder(NAME, weights=tmp_path / "evil.pth", **kw)
    assert _SIDE_EFFECT == []


def test_bad_names_and_models():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_patch61_224'"): DenseEncoder("vit_tiny_patch61_224")
    with pytest.raises(ValueError, match="expected a timm Vision Transformer"): DenseEncoder(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="only allowed with a timm model name"):
        DenseEncoder(timm.create_model(NAME, img_size=32, **TINY), depth=3)


def test_bad_images():
    enc = DenseEncoder(NAME, img_size=32, patch_size=8, **TINY)
    cases = [(torch.rand(3, 32, 32), "expected shape"), (torch.rand(1, 4, 32, 32), "expected shape"),
             (torch.rand(1, 1, 3, 32, 32), "expected shape"), (torch.randint(0, 255, (1, 3, 32, 32)), "float tensor"),
             (torch.rand(1, 3, 32, 32) * 255, r"values in \[0, 1\]"), (torch.rand(1, 3, 32, 32) - 0.5, r"values in \[0, 1\]"),
             (torch.full((1, 3, 32, 32), float("nan")), "NaN"), (torch.rand(1, 3, 32, 36), "divisible by the patch size 8"),
             ([[0.5]], "float tensor")]
    for x, msg in cases:
        with pytest.raises(ValueError, match=msg): enc(x)
    fixed = DenseEncoder(NAME, img_size=32, patch_size=8, dynamic_img_size=False, **TINY)
    assert fixed(torch.rand(1, 3, 32, 32)).shape == (1, 32, 4, 4)
    with pytest.raises(ValueError, match="fixed input size"): fixed(torch.rand(1, 3, 32, 48))


def test_frozen_vs_trainable():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    frozen = DenseEncoder(NAME, img_size=32, patch_size=8, **TINY)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.training and not frozen.train().training and not torch.nn.Sequential(frozen).train()[0].model.training
    frozen(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is None for p in frozen.parameters())   # grads reach the input only
    live = DenseEncoder(NAME, img_size=32, patch_size=8, frozen=False, **TINY)
    assert live.training and all(p.requires_grad for p in live.parameters())
    live(torch.rand(2, 3, 32, 32)).square().sum().backward()
    assert all(p.grad is not None for n, p in live.named_parameters()), "every parameter gets a gradient"


def test_save_load_encoder(tmp_path):
    torch.manual_seed(0)
    enc = DenseEncoder(NAME, img_size=32, patch_size=8, reg_tokens=4, normalize="model", frozen=False, **TINY)
    p = save_encoder(enc, tmp_path / "sub" / "enc.safetensors", dict(steps=3, note="x"))
    assert sorted(f.name for f in p.parent.iterdir()) == ["enc.json", "enc.safetensors"]
    enc2 = load_encoder(p)
    x = torch.rand(2, 3, 32, 48)
    torch.testing.assert_close(enc2(x), enc(x), rtol=0, atol=0)
    assert enc2.meta == dict(steps=3, note="x") and enc2.frozen and enc2.num_prefix_tokens == 5
    assert torch.equal(enc2.mean, torch.full((1, 3, 1, 1), 0.5))
    assert load_encoder(p, frozen=False, upsample=True)(x).shape == (2, 32, 32, 48)
    with pytest.raises(ValueError, match="file not found"): load_encoder(tmp_path / "none.safetensors")
    (tmp_path / "bad.json").write_text('{"meta": {}}'); (tmp_path / "bad.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not an encoder config"): load_encoder(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=".safetensors"): save_encoder(enc, tmp_path / "e.pth")
    with pytest.raises(ValueError, match="model instance"): save_encoder(DenseEncoder(enc.model), tmp_path / "e.safetensors")


def test_pca_rgb_known_answer():
    torch.manual_seed(0)
    lab = torch.zeros(1, 4, 4, dtype=torch.long); lab[:, :2] = 1; lab[:, :, :1] = 2
    feat = (torch.eye(3)[lab] @ torch.randn(3, 16)).permute(0, 3, 1, 2)   # 3 distinct vectors
    out = pca_rgb(feat)
    assert out.shape == (1, 4, 4, 3) and out.min() >= 0 and out.max() <= 1
    for c in range(3):   # same label -> same colour, different labels -> different colours
        cols = out[lab == c]
        assert torch.allclose(cols, cols[:1].expand_as(cols), atol=1e-5)
    assert len(torch.unique(out.reshape(-1, 3).round(decimals=4), dim=0)) == 3
    assert torch.isfinite(pca_rgb(torch.ones(1, 8, 3, 3))).all()          # constant features: no NaN


def test_load_teacher_offline(tmp_path):
    import pytest as _pt
    with _pt.raises(ValueError, match="no shipped teacher for 'nope'"):
        load_teacher("nope")
    with _pt.raises(ValueError, match="file not found"):
        load_teacher(path=tmp_path / "missing.safetensors")
    enc = DenseEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    save_encoder(enc, tmp_path / "t.safetensors", dict(note="x"))
    back = load_teacher(path=tmp_path / "t.safetensors")
    x = torch.rand(1, 3, 32, 48)
    assert torch.equal(back(x), enc(x)) and back.meta == dict(note="x")


def test_shipped_small_teacher_loads_offline_with_its_provenance():
    t = load_teacher()                                                     # preset "small", from condense_nb/assets
    assert (t.embed_dim, t.patch_size) == (192, 8) and not any(p.requires_grad for p in t.parameters())
    assert t(torch.rand(2, 3, 96, 128)).shape == (2, 192, 12, 16)
    m = t.meta
    assert m["command"].startswith("condense-nb reproduce --preset small") and m["training"]["steps"] == m["teacher_config"]["steps"]
    rows = m["probe_test"]["probes"]                                     # its probe numbers travel with it
    assert {"RGB pixels", "random-init ViT", "teacher"} <= set(rows)
    assert rows["teacher"]["seg"]["mean"]["mIoU"] > rows["random-init ViT"]["seg"]["mean"]["mIoU"]
    assert rows["teacher"]["depth"]["mean"]["rmse"] < rows["random-init ViT"]["depth"]["mean"]["rmse"]
