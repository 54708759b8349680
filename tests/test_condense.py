"""ConDense's joint trainer (condense_nb.condense) without papermill: config, warm-up semantics, bit-identical resume,
the val choice of the fidelity weight, and a clear error for a damaged checkpoint."""
import pytest
import torch
from condense_nb.condense import (CondenseConfig, PRESETS, Joint, load_rooms, fit_standardizer, build_models, make_optimizer,
                                  train_step, train_joint, pretrain)
import condense_nb.condense as condense


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from condense_nb.datasets import build_preset, resolve_config
    from condense_nb.encoders import DenseEncoder
    tmp = tmp_path_factory.mktemp("condense_trainer")
    torch.set_num_threads(1)
    root = build_preset("tiny", root=tmp / "data", progress=False)
    torch.manual_seed(0)
    teacher = DenseEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3).eval()
    cfg = CondenseConfig.from_preset("tiny", steps=6, warmup=2, ckpt_every=2)
    rooms = {s: load_rooms(root, s, teacher, cfg) for s in ("train", "val")}
    std = fit_standardizer([r["teacher"] for r in rooms["train"]])
    for rs in rooms.values():
        for r in rs: r["teacher"] = std(r["teacher"])
    d = resolve_config("tiny")
    return tmp, teacher, cfg, rooms, Joint(rooms["train"], std, d.width, d.height, teacher.patch_size)


def test_config_presets_and_errors():
    for name in PRESETS: assert CondenseConfig.from_preset(name).sweep_steps <= CondenseConfig.from_preset(name).steps
    assert CondenseConfig.from_preset("tiny", steps=3).sweep_steps == 3
    with pytest.raises(ValueError, match=r"unknown CondenseConfig field\(s\) \['stepz'\]"): CondenseConfig.from_preset("tiny", stepz=1)
    with pytest.raises(ValueError, match="CondenseConfig.views_per_step: expected a positive int"): CondenseConfig.from_preset("tiny", views_per_step=0)
    with pytest.raises(ValueError, match="CondenseConfig.res"): CondenseConfig.from_preset("tiny", res=(8, 16))
    with pytest.raises(ValueError, match="CondenseConfig.render_norm"): CondenseConfig.from_preset("tiny", render_norm="max")


def _params(m): return [p.detach().clone() for p in m.parameters()]


def test_rooms_carry_what_a_step_needs(setup):
    _, teacher, cfg, rooms, _ = setup
    r = rooms["train"][0]
    assert r["grid"].shape == (4, *cfg.res) and r["density"].shape == (1, *cfg.res) and r["labels"].shape == cfg.res
    assert torch.equal(r["density"][0], r["occ"] * cfg.sigma)                   # density is sigma * occupancy
    assert r["teacher"].shape[:2] == (len(r["rgb"]), teacher.embed_dim)


def test_warmup_fixes_the_2d_side_then_it_moves(setup):
    _, teacher, cfg, _, joint = setup
    m = build_models(teacher, cfg); opt = make_optimizer(m, cfg)
    s0, e0 = _params(m["student"]), _params(m["enc3d"])
    for step in range(cfg.warmup):
        rec = train_step(m, opt, joint, cfg, step, lam_fid=1.0)
        assert rec["fid"] == 0.0                                                  # no fidelity term in the warm-up
    assert all(torch.equal(a, b) for a, b in zip(s0, _params(m["student"])))     # the student is still the teacher
    assert not all(torch.equal(a, b) for a, b in zip(e0, _params(m["enc3d"])))   # ... while the 3D side learned
    rec = train_step(m, opt, joint, cfg, cfg.warmup, lam_fid=1.0)
    assert not all(torch.equal(a, b) for a, b in zip(s0, _params(m["student"])))  # after it, the student moves too
    assert abs(rec["fid"]) < 1e-6                # computed before the update: the student still equals the teacher
    rec = train_step(m, opt, joint, cfg, cfg.warmup + 1, lam_fid=1.0)
    assert rec["fid"] > 1e-9 and all(v == v for v in rec.values())                # now it differs from the teacher, finitely


def test_oracle_targets_never_train_the_student(setup):
    _, teacher, cfg, rooms, joint = setup
    for r in rooms["train"]: r["oracle"] = torch.randn_like(r["teacher"])
    m = build_models(teacher, cfg); opt = make_optimizer(m, cfg); s0 = _params(m["student"])
    for step in range(cfg.warmup + 2): train_step(m, opt, joint, cfg, step, 1.0, targets="oracle")
    assert all(torch.equal(a, b) for a, b in zip(s0, _params(m["student"])))


def test_resume_is_bit_identical(setup):
    tmp, teacher, cfg, _, joint = setup
    quiet = lambda s: None
    m_a, h_a = train_joint(teacher, joint, cfg, 1.0, 6, tmp / "a", log=quiet)
    train_joint(teacher, joint, cfg, 1.0, 4, tmp / "b", log=quiet)                # interrupted after step 4 ...
    m_b, h_b = train_joint(teacher, joint, cfg, 1.0, 6, tmp / "b", log=quiet)     # ... resumed to 6
    assert [h["loss"] for h in h_a] == [h["loss"] for h in h_b] and len(h_a) == 6
    for k in m_a:
        assert all(torch.equal(a, b) for a, b in zip(m_a[k].state_dict().values(), m_b[k].state_dict().values())), k
    assert not any(p.requires_grad for p in m_a["student"].parameters())        # returned frozen, in eval mode


def test_damaged_checkpoint_names_the_file(setup):
    tmp, teacher, cfg, _, joint = setup
    d = tmp / "damaged"
    train_joint(teacher, joint, cfg, 1.0, 2, d, log=lambda s: None)
    for f in (d / "ckpt").glob("step_*.safetensors"): f.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"could not restore checkpoint step_0000002\.safetensors .*remove .*damaged to start from step 0"):
        train_joint(teacher, joint, cfg, 1.0, 4, d, log=lambda s: None)


def test_pretrain_chooses_on_val_breaks_ties_up_and_caches(setup, monkeypatch):
    tmp, teacher, cfg, rooms, joint = setup
    c = CondenseConfig.from_preset("tiny", steps=3, sweep_steps=2, warmup=1, lam_fids=(0.3, 1.0, 3.0))
    scores = {0.3: 0.4, 1.0: 0.6, 3.0: 0.6}                                     # a tie between 1 and 3: the larger wins
    calls = []
    def fake_val(student, val_rooms, cfg_):
        calls.append(1); return scores[[0.3, 1.0, 3.0][len(calls) - 1]]
    monkeypatch.setattr(condense, "val_corr_acc", fake_val)
    m, hist, lam, got = pretrain(teacher, joint, rooms["val"], c, tmp / "sweep", log=lambda s: None)
    assert lam == 3.0 and got == {"0.3": 0.4, "1": 0.6, "3": 0.6} and len(hist) == 3 and len(calls) == 3
    assert pretrain(teacher, joint, rooms["val"], c, tmp / "sweep", log=lambda s: None)[2] == 3.0 and len(calls) == 3   # cached
    m, hist, lam, got = pretrain(teacher, joint, rooms["val"], c, tmp / "nosweep", sweep=False, log=lambda s: None)
    assert lam == c.lam_fid and got == {}
