"Tests for condense_nb.teacher: presets, augmentations, losses, EMA, schedules, training, checkpoints and resume."
import json, math
import pytest
import torch
import torch.nn.functional as F
import safetensors.torch as st
from condense_nb.encoders import load_encoder
from condense_nb.teacher import (TeacherConfig, PRESETS, from_preset, random_resized_crop, color_jitter, random_grayscale,
                                 gaussian_blur, solarize, multi_crop, toy_images, DinoNet, DinoState, vit_tokens,
                                 random_patch_masks, softmax_ce, dino_loss, ibot_loss, update_center, cosine_schedule,
                                 ema_update, schedules, train_step, train_teacher, batch_indices, as_image_dataset,
                                 load_teacher_checkpoint, param_groups, DinoHead)




def gen(seed=0): return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- presets
def test_presets():
    small = from_preset("small")
    assert (small.patch_size, small.global_size, small.embed_dim, small.depth) == (8, 64, 192, 6)
    assert set(PRESETS) == {"tiny", "small", "full"}
    assert from_preset("tiny", steps=7, seed=3).steps == 7
    with pytest.raises(ValueError, match="preset: unknown value 'base'"): from_preset("base")
    with pytest.raises(ValueError, match=r"unknown TeacherConfig field\(s\) \['epochs'\]"): from_preset("tiny", epochs=3)
    for name in PRESETS:   # every preset builds a consistent config
        c = from_preset(name)
        assert c.global_size % c.patch_size == 0 and c.local_size % c.patch_size == 0 and c.embed_dim % c.num_heads == 0


# ---------------------------------------------------------------- augmentations
@pytest.mark.parametrize("H,W", [(32, 32), (48, 80), (100, 60)])
def test_multi_crop_shapes_and_range(H, W):
    cfg = from_preset("small", n_local=3)
    for x in [torch.rand(5, 3, H, W), torch.zeros(5, 3, H, W), torch.ones(5, 3, H, W)]:
        g, l = multi_crop(x, cfg, gen())
        assert g.shape == (10, 3, 64, 64) and l.shape == (15, 3, 32, 32)
        assert g.min() >= 0 and g.max() <= 1 and l.min() >= 0 and l.max() <= 1 and torch.isfinite(g).all()
    assert multi_crop(x, from_preset("small", n_local=0), gen())[1].shape == (0, 3, 32, 32)


def test_multi_crop_is_a_function_of_the_generator():
    x, cfg = torch.rand(3, 3, 40, 40), from_preset("tiny")
    a, b = multi_crop(x, cfg, gen(5)), multi_crop(x, cfg, gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], multi_crop(x, cfg, gen(6))[0])


def test_random_resized_crop_geometry():
    ramp = torch.linspace(0, 1, 50).expand(400, 3, 30, 50).contiguous()   # horizontal ramp
    c = random_resized_crop(ramp, 12, (0.2, 0.9), gen())
    torch.testing.assert_close(c, c[:, :, :1].expand_as(c))               # no vertical variation
    d = c.diff(dim=-1)
    torch.testing.assert_close(d, d[..., :1].expand_as(d), atol=1e-5, rtol=0)   # still linear
    # ramp value = (pixel coordinate - 0.5) / 49 on a 50 px row; the 12 output centres span 11/12 of the crop
    width = (c[..., -1] - c[..., 0]).abs()[:, 0, 0] * (49 / 50) * (12 / 11)   # crop width as a fraction of the image
    assert width.min() > math.sqrt(0.2 * 3 / 4) * 0.95 and width.max() <= 1 + 1e-5
    flipped = (d[:, 0, 0, 0] < 0).float().mean()
    assert 0.4 < flipped < 0.6                                               # about half are flipped
    assert (d[:, 0, 0, 0] > 0).all() == False and random_resized_crop(ramp[:20], 12, (0.2, 0.9), gen(), flip=False).diff(dim=-1).min() > 0


def test_gaussian_blur_against_reference():
    x = torch.rand(2, 3, 17, 23)
    sigma = 0.8
    y = gaussian_blur(x, gen(), p=1.0, sigma=(sigma, sigma))
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k1 = torch.exp(-t ** 2 / (2 * sigma ** 2)); k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(3, 1, -1, -1)                    # 2-D kernel, per channel
    ref = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k2, groups=3)
    torch.testing.assert_close(y, ref.clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_blur(x, gen(), p=0.0), x)
    const = torch.full((1, 3, 9, 9), 0.42)
    torch.testing.assert_close(gaussian_blur(const, gen(), 1.0, (1.5, 1.5)), const)


def test_color_ops():
    x = 0.25 + 0.5 * torch.rand(64, 3, 8, 8)                                 # mid-range: no clamping
    # hue rotation alone keeps the luma (it rotates the chroma plane of YIQ)
    y = color_jitter(x, gen(), strength=(0.0, 0.0, 0.0, 0.05), p=1.0)
    luma = lambda im: 0.299 * im[:, 0] + 0.587 * im[:, 1] + 0.114 * im[:, 2]
    torch.testing.assert_close(luma(y), luma(x), atol=1e-4, rtol=0)
    assert (y - x).abs().max() > 1e-3
    # brightness alone scales every pixel of an image by one factor in [0.6, 1.4]
    x2 = 0.25 + 0.45 * torch.rand(64, 3, 8, 8)                                # x 1.4 stays below 1
    y = color_jitter(x2, gen(), strength=(0.4, 0.0, 0.0, 0.0), p=1.0)
    ratio = y / x2
    torch.testing.assert_close(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-4, rtol=0)
    assert ratio.min() >= 0.6 - 1e-4 and ratio.max() <= 1.4 + 1e-4
    # saturation 0 would be grey: with factor range (1-1, 1+1) output stays in range
    z = color_jitter(torch.rand(16, 3, 8, 8), gen(), strength=(0.9, 0.9, 1.0, 0.5), p=1.0)
    assert z.min() >= 0 and z.max() <= 1
    gr = random_grayscale(x, gen(), p=1.0)
    torch.testing.assert_close(gr, luma(x)[:, None].expand_as(x))
    torch.testing.assert_close(random_grayscale(x, gen(), p=0.0), x)
    v = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    torch.testing.assert_close(solarize(v, gen(), 1.0)[0, 0, 0], torch.tensor([0.0, 0.3, 0.5, 0.1, 0.0]))


# ---------------------------------------------------------------- networks, masks, losses
def test_vit_tokens_and_mask_token():
    torch.manual_seed(0)
    net = DinoNet(from_preset("tiny"))
    x = torch.rand(2, 3, 32, 40)
    enc = net.encoder
    torch.testing.assert_close(vit_tokens(net, x), enc.model.forward_features((x - enc.mean) / enc.std))
    full = torch.ones(2, 4, 5, dtype=torch.bool)                             # everything masked: content is gone
    torch.testing.assert_close(vit_tokens(net, x, full), vit_tokens(net, torch.rand(2, 3, 32, 40), full))
    none = torch.zeros(2, 4, 5, dtype=torch.bool)
    torch.testing.assert_close(vit_tokens(net, x, none), vit_tokens(net, x))


def test_random_patch_masks():
    m = random_patch_masks(2000, 8, 8, gen(), prob=0.5, ratio=(0.25, 0.25))
    n = m.flatten(1).sum(1)
    assert set(n.tolist()) == {0, 16}                                        # round(0.25*64) or none
    assert 0.45 < (n > 0).float().mean() < 0.55
    assert 0.2 < m[n > 0].float().mean(0).min() and m[n > 0].float().mean(0).max() < 0.3   # positions uniform


def test_losses_against_brute_force():
    torch.manual_seed(0)
    K, B, V = 7, 3, 4
    s, t, c = torch.randn(V * B, K), torch.randn(2 * B, K), torch.randn(1, K) * 0.1
    def H(tv, sv):  # one pair, one image, from the definition
        pt = torch.exp((tv - c[0]) / 0.04); pt = pt / pt.sum()
        ls = sv / 0.1 - torch.logsumexp(sv / 0.1, 0)
        return -(pt * ls).sum()
    ref = sum(H(t[i * B + b], s[v * B + b]) for i in range(2) for v in range(V) if v != i for b in range(B)) / ((2 * V - 2) * B)
    torch.testing.assert_close(dino_loss(s, t, c, 0.04, 0.1), ref)
    img_of = torch.tensor([0, 0, 0, 2, 5])                                  # images 1, 3, 4 have no masked patch
    sp, tp = torch.randn(5, K), torch.randn(5, K)
    ref = ((H(tp[0], sp[0]) + H(tp[1], sp[1]) + H(tp[2], sp[2])) / 3 + H(tp[3], sp[3]) + H(tp[4], sp[4])) / 3
    torch.testing.assert_close(ibot_loss(sp, tp, img_of, 6, c, 0.04, 0.1), ref)
    assert ibot_loss(torch.zeros(0, K), torch.zeros(0, K), torch.zeros(0, dtype=torch.long), 6, c, 0.04, 0.1) == 0
    torch.testing.assert_close(update_center(torch.ones(1, 2), torch.tensor([[1., 3.], [3., 5.]]), 0.9), torch.tensor([[1.1, 1.3]]))


# ---------------------------------------------------------------- schedules and EMA
def test_schedules():
    cfg = from_preset("small", steps=100, warmup_steps=10, lr=1e-3, min_lr=0.0, momentum=(0.99, 1.0),
                      teacher_temp=0.07, warmup_teacher_temp=0.04, teacher_temp_warmup_steps=30)
    s0, s5, s10, s55, s100 = (schedules(cfg, k) for k in (0, 5, 10, 55, 100))
    assert (s0["lr"], s5["lr"], s10["lr"]) == (0.0, 5e-4, 1e-3)
    assert s55["lr"] == pytest.approx(5e-4) and s100["lr"] == pytest.approx(0.0)
    m = lambda k: 1 - (1 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2      # DINO's cosine momentum
    for k in (0, 13, 50, 77, 100): assert schedules(cfg, k)["momentum"] == pytest.approx(m(k))
    assert s0["teacher_temp"] == 0.04 and schedules(cfg, 15)["teacher_temp"] == pytest.approx(0.055)
    assert schedules(cfg, 30)["teacher_temp"] == pytest.approx(0.07) == schedules(cfg, 90)["teacher_temp"]
    assert cosine_schedule(7, 7, 2.0, 1.0) == 1.0 and cosine_schedule(50, 7, 2.0, 1.0) == 1.0


def test_ema_update_by_hand():
    torch.manual_seed(0)
    t, s = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)), torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    with torch.no_grad():
        for p in s.parameters(): p.normal_()
    before = [p.clone() for p in t.parameters()]
    ema_update(t, s, 0.9)
    for pt, p0, ps in zip(t.parameters(), before, s.parameters()):
        torch.testing.assert_close(pt, torch.stack([0.9 * a + 0.1 * b for a, b in zip(p0.flatten(), ps.flatten())]).view_as(p0))
    w = t[0].weight[0, 0].item()
    ema_update(t, s, 1.0); assert t[0].weight[0, 0].item() == w                # momentum 1 freezes the teacher
    ema_update(t, s, 0.0); assert torch.equal(t[0].weight, s[0].weight)         # momentum 0 copies the student


def test_train_step_teacher_is_ema_of_student():
    torch.manual_seed(0)
    cfg = from_preset("tiny", momentum=(0.7, 1.0), steps=10)
    state = DinoState(cfg); opt = torch.optim.AdamW(param_groups(state.student), lr=cfg.lr)
    x = toy_images(8, 32)
    train_step(state, opt, x, cfg, 0)
    t_before = [p.clone() for p in state.teacher.parameters()]
    rec = train_step(state, opt, x, cfg, 3)
    m = 1 - 0.3 * (math.cos(math.pi * 3 / 10) + 1) / 2
    assert rec["momentum"] == pytest.approx(m)
    for pt, p0, ps in zip(state.teacher.parameters(), t_before, state.student.parameters()):
        torch.testing.assert_close(pt, m * p0 + (1 - m) * ps)
    assert not any(p.requires_grad for p in state.teacher.parameters())


# ---------------------------------------------------------------- data
def test_data_inputs():
    n, b = 10, 4
    stream = sum((batch_indices(s, b, n, 3) for s in range(5)), [])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))   # epochs are permutations
    assert batch_indices(2, b, n, 3) == batch_indices(2, b, n, 3) != batch_indices(2, b, n, 4)
    with pytest.raises(ValueError, match=r"expected a tensor \[N, 3, H, W\]"): as_image_dataset(torch.rand(3, 3, 8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"): as_image_dataset(torch.rand(3, 3, 8, 8) + 1)
    with pytest.raises(ValueError, match="is empty"): as_image_dataset(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="'image' or 'rgb'"): as_image_dataset([{"depth": torch.rand(3, 8, 8)}])
    with pytest.raises(ValueError, match="uint8"): as_image_dataset([torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="map-style Dataset"): as_image_dataset(iter([1, 2]))


def test_train_accepts_datasets_of_tuples_and_dicts(tmp_path):
    imgs = toy_images(12, 32)
    cfg = from_preset("tiny", steps=2, batch_size=4)
    a = train_teacher([(im, 0) for im in imgs], cfg, tmp_path / "a", progress=False)
    b = train_teacher([{"rgb": im, "depth": 0} for im in imgs], cfg, tmp_path / "b", progress=False)
    c = train_teacher(imgs, cfg, tmp_path / "c", progress=False)
    x = imgs[:2]
    assert torch.equal(a(x), c(x)) and torch.equal(b(x), c(x))


def test_bf16_autocast_keeps_scores_float32_and_matches_fp32():
    torch.manual_seed(0)
    head, x = DinoHead(16, 32, 16, 8), torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16): s16 = head(x)
    s32 = head(x)
    assert s16.dtype == torch.float32 and s16.abs().max() <= 1 + 1e-6        # cosine scores, computed in float32
    assert (s16 - s32).abs().max() < 0.05                                  # only the MLP ran in bfloat16
    losses = {}
    for prec in ("fp32", "bf16"):                                          # the same step from the same weights
        torch.manual_seed(0)
        cfg = from_preset("tiny", precision=prec)
        state = DinoState(cfg); opt = torch.optim.AdamW(param_groups(state.student), lr=cfg.lr)
        losses[prec] = train_step(state, opt, toy_images(8, 64), cfg, 0)["loss"]
    assert math.isfinite(losses["bf16"]) and abs(losses["bf16"] - losses["fp32"]) < 0.02 * abs(losses["fp32"])
    cfg = from_preset("tiny", precision="fp16")
    state = DinoState(cfg)
    with pytest.raises(ValueError, match="precision: unknown value 'fp16'"):
        train_step(state, torch.optim.AdamW(param_groups(state.student)), toy_images(8, 64), cfg, 0)


# ---------------------------------------------------------------- training, checkpoints, resume
def test_loss_falls_on_tiny_run(tmp_path):
    cfg = from_preset("tiny")
    enc = train_teacher(toy_images(64, 32), cfg, tmp_path, progress=False)
    h = enc.meta["history"]
    assert len(h) == cfg.steps and all(math.isfinite(r["loss"]) for r in h)
    terms = lambda r: r["dino"] + r["ibot"] + r["dense"]                 # unweighted: the dense term's weight ramps up
    first, last = sum(terms(r) for r in h[:5]) / 5, sum(terms(r) for r in h[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert all(0.5 < r["target_entropy"] < r["batch_entropy"] < math.log(cfg.out_dim) for r in h)   # no collapse
    # artefacts: the teacher encoder reloads bit-for-bit, config and metrics are there
    x = toy_images(2, 32, seed=9)
    torch.testing.assert_close(load_encoder(tmp_path / "teacher.safetensors")(x), enc(x), rtol=0, atol=0)
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == cfg.steps
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == cfg.steps
    assert load_encoder(tmp_path / "teacher.safetensors").meta["steps"] == cfg.steps


def _final_state(out):
    "(step, networks and centres, optimizer state tensors) of the checkpoint latest.json names."
    meta = json.loads((out / "latest.json").read_text())
    t = st.load_file(out / meta["checkpoint"])
    return meta["step"], {k: v for k, v in t.items() if not k.startswith("optim.")}, {k: v for k, v in t.items() if k.startswith("optim.")}


def test_resume_equals_uninterrupted(tmp_path):
    cfg = from_preset("tiny", steps=6, ckpt_every=2, keep_ckpts=1)
    data = toy_images(24, 32)
    full = train_teacher(data, cfg, tmp_path / "full", progress=False)
    part = train_teacher(data, cfg, tmp_path / "resumed", progress=False, stop_at=3)
    assert part.meta["resumed_from"] == 0 and not (tmp_path / "resumed" / "teacher.safetensors").exists()
    assert json.loads((tmp_path / "resumed" / "latest.json").read_text())["step"] == 3
    res = train_teacher(data, cfg, tmp_path / "resumed", progress=False)
    assert res.meta["resumed_from"] == 3 and [h["step"] for h in res.meta["history"]] == list(range(6))
    s1, w1, o1 = _final_state(tmp_path / "full")
    s2, w2, o2 = _final_state(tmp_path / "resumed")
    assert s1 == s2 == 6 and set(w1) == set(w2)
    for k in w1: assert torch.equal(w1[k], w2[k]), k                       # student, teacher, centres: bit-identical
    assert set(o1) == set(o2) and o1
    for k in o1: assert torch.equal(o1[k], o2[k]), k                       # the AdamW state too
    assert [h["loss"] for h in full.meta["history"]] == [h["loss"] for h in res.meta["history"]]
    assert len(list((tmp_path / "resumed" / "ckpt").iterdir())) == 1        # keep_ckpts=1: one file (networks + optimizer)
    # nothing left to do: a third call trains no step and returns the same teacher
    again = train_teacher(data, cfg, tmp_path / "resumed", progress=False)
    assert again.meta["resumed_from"] == 6 and torch.equal(again(data[:2]), full(data[:2]))


def test_snapshots_survive_a_resume(tmp_path):
    "keep_every: the EMA teacher of every k-th step is kept; an interrupted run keeps the same snapshots bit for bit, and the last one is the teacher."
    from condense_nb.teacher import snapshot_path
    from condense_nb.encoders import load_encoder
    cfg = from_preset("tiny", steps=6, ckpt_every=3, keep_ckpts=1, keep_every=2)
    data = toy_images(16, 32)
    full = train_teacher(data, cfg, tmp_path / "full", progress=False)
    train_teacher(data, cfg, tmp_path / "resumed", progress=False, stop_at=3)       # the checkpoint of step 3 sits between snapshots 2 and 4
    assert sorted(p.name for p in (tmp_path / "resumed" / "snapshots").glob("*.safetensors")) == ["step_0000002.safetensors"]
    train_teacher(data, cfg, tmp_path / "resumed", progress=False)
    for step in (2, 4, 6):
        a, b = (st.load_file(snapshot_path(tmp_path / r, step)) for r in ("full", "resumed"))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), step
    assert json.loads(snapshot_path(tmp_path / "full", 4).with_suffix(".json").read_text())["meta"]["step"] == 4
    last, first = load_encoder(snapshot_path(tmp_path / "full", 6)), load_encoder(snapshot_path(tmp_path / "full", 2))
    assert torch.equal(last(data[:2]), full(data[:2])) and not torch.equal(first(data[:2]), full(data[:2]))
    # a run without keep_every keeps none, and keep_every may change on resume (bookkeeping)
    train_teacher(data, from_preset("tiny", steps=2), tmp_path / "none", progress=False)
    assert not (tmp_path / "none" / "snapshots").exists()


def test_resume_refuses_another_config_and_bad_files(tmp_path, capsys):
    data = toy_images(8, 32)
    cfg = from_preset("tiny", steps=2)
    train_teacher(data, cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another config \(fields \['embed_dim'\]"):
        train_teacher(data, from_preset("tiny", steps=2, embed_dim=24), tmp_path, progress=False)
    train_teacher(data, from_preset("tiny", steps=2, ckpt_every=1, log_every=5), tmp_path, progress=False)   # bookkeeping may change
    cfg = from_preset("tiny", steps=2, ckpt_every=1, keep_ckpts=2)
    good = train_teacher(data, cfg, tmp_path / "b", progress=False)          # checkpoints of steps 1 and 2
    meta = json.loads((tmp_path / "b" / "latest.json").read_text())
    (tmp_path / "b" / meta["checkpoint"]).write_bytes(b"garbage")            # the newest checkpoint is damaged:
    res = train_teacher(data, cfg, tmp_path / "b", progress=False)           # resume from the older kept one, and say so
    assert res.meta["resumed_from"] == 1 and "resumed from the older kept checkpoint step 1" in capsys.readouterr().out
    assert torch.equal(res(data[:2]), good(data[:2]))                        # replaying step 2 gives the same teacher
    (tmp_path / "b" / meta["checkpoint"]).write_bytes(b"garbage"); (tmp_path / "b" / "ckpt" / "step_0000001.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="could not restore checkpoint step_0000002.safetensors .*; nor checkpoint step_0000001.safetensors .*remove .* to start from step 0"):
        train_teacher(data, cfg, tmp_path / "b", progress=False)


def test_checkpoints_hold_tensors_only_and_old_folders_are_refused(tmp_path):
    """A checkpoint is one safetensors file (networks, centres, optimizer state as tensors; nothing to unpickle), and a run
    folder written by an older condense-nb (weights + a torch.save optimizer file) gets one clear error, not a traceback."""
    data = toy_images(8, 32)
    cfg = from_preset("tiny", steps=2)
    train_teacher(data, cfg, tmp_path, progress=False)
    assert sorted(p.suffix for p in (tmp_path / "ckpt").iterdir()) == [".safetensors"] * len(list((tmp_path / "ckpt").iterdir()))
    (tmp_path / "latest.json").write_text(json.dumps(dict(step=2, weights="ckpt/step_0000002.safetensors", optimizer="ckpt/step_0000002.optim.pt")))
    state = DinoState(cfg); opt = torch.optim.AdamW(param_groups(state.student))
    with pytest.raises(ValueError, match="not a condense_nb.checkpoint/1 run folder .*older condense-nb"):
        load_teacher_checkpoint(tmp_path, state, opt, cfg)


def test_precision_auto_uses_bf16_only_where_it_is_fast(monkeypatch):
    from condense_nb.teacher import autocast_bf16
    cpu = torch.device("cpu")
    assert autocast_bf16("bf16", cpu) and not autocast_bf16("fp32", cpu)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not autocast_bf16("auto", cpu)                                   # emulated bf16: ~12x slower on AVX2
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert autocast_bf16("auto", cpu) and autocast_bf16("auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="precision"):
        autocast_bf16("half", cpu)


def test_dense_term_pairs_each_crop_with_the_other_global_crops():
    from condense_nb.teacher import _dense_term, dense_loss, token_grid
    g = torch.Generator().manual_seed(0)
    B, K, h = 2, 6, 4
    gbox = torch.tensor([[0.6, 0.1, 0.6, 0.0]] * B + [[0.5, -0.2, 0.5, 0.1]] * B)
    lbox = torch.tensor([[0.3, 0.0, 0.3, 0.05]] * B)
    s_glob, s_loc = torch.randn(2 * B, K, h, h, generator=g), torch.randn(B, K, 2, 2, generator=g)
    t_probs = torch.rand(2 * B, K, h, h, generator=g).softmax(1)
    parts = [dense_loss(s_glob[:B], t_probs[B:], token_grid(gbox[:B], gbox[B:], h, h), 0.1),    # global 0 -> teacher global 1
             dense_loss(s_glob[B:], t_probs[:B], token_grid(gbox[B:], gbox[:B], h, h), 0.1),    # global 1 -> teacher global 0
             dense_loss(s_loc, t_probs[:B], token_grid(lbox, gbox[:B], 2, 2), 0.1),             # the local crop -> both
             dense_loss(s_loc, t_probs[B:], token_grid(lbox, gbox[B:], 2, 2), 0.1)]
    assert torch.allclose(_dense_term(s_glob, s_loc, t_probs, gbox, lbox, 0.1), torch.stack(parts).mean())


def test_image_centred_patch_targets_ignore_what_every_patch_of_an_image_shares():
    from condense_nb.teacher import _patch_targets
    cfg = from_preset("tiny", patch_targets="image")
    state = DinoState(cfg)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2 * 16, 8, generator=g)
    shifted = t.clone(); shifted[:16] += 5 * torch.randn(8, generator=g)   # a per-image code added to image 0's patches
    q = _patch_targets(t, state, cfg, 0.1, 2)
    assert torch.allclose(q, _patch_targets(shifted, state, cfg, 0.1, 2), atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(32))
    per = t.view(2, 16, 8)
    assert torch.allclose(q, torch.softmax((per - per.mean(1, keepdim=True)) / 0.1, -1).view(32, 8))
