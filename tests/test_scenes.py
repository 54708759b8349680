"""SynthRooms against independent truth: analytic depth, a sphere-tracing reference built from signed
distance functions written here, cross-view geometry, and the grammar's invariants."""
import math
import numpy as np
import pytest
import torch
from condense_nb.cameras import intrinsics, look_at, get_rays, unproject, project, inroom_path
from condense_nb.scenes import Scene, sphere, box, cylinder, render, sample_points, CLASSES, CLASS_ID, OBJECT_CLASSES, SPHERE, BOX, PALETTE
from condense_nb.rooms import make_room, caption, near_duplicate, object_gallery_scene, make_object


# ---------- an independent reference: signed distance functions + sphere tracing ----------
def sdf(scene, p):  # p [N, 3] -> [N, P]
    v = p[:, None, :] - scene.center[None]
    c, s = torch.cos(-scene.yaw), torch.sin(-scene.yaw)
    q = torch.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1], v[..., 2]], -1)
    h = scene.half[None]
    d_sph = q.norm(dim=-1) - h[..., 0]
    e = q.abs() - h
    d_box = e.clamp_min(0).norm(dim=-1) + e.amax(-1).clamp_max(0)
    dc = torch.stack([q[..., :2].norm(dim=-1) - h[..., 0], q[..., 2].abs() - h[..., 2]], -1)
    d_cyl = dc.amax(-1).clamp_max(0) + dc.clamp_min(0).norm(dim=-1)
    k = scene.kind[None]
    return torch.where(k == SPHERE, d_sph, torch.where(k == BOX, d_box, d_cyl))


def sphere_trace(scene, o, d, steps=400, eps=1e-5, far=50.0):
    t = torch.zeros(o.shape[0])
    active = torch.ones(o.shape[0], dtype=torch.bool)
    for _ in range(steps):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0: break
        dist = sdf(scene, o[idx] + t[idx, None] * d[idx]).amin(-1)
        t[idx] = (t[idx] + dist.clamp_min(0)).clamp_max(far)
        active[idx] = (dist > eps) & (t[idx] < far)
    hit = sdf(scene, o + t[:, None] * d).amin(-1) < 1e-3
    prim = sdf(scene, o + t[:, None] * d).argmin(-1)
    return t, hit, prim


def test_analytic_sphere_depth_every_pixel():
    c, r = torch.tensor([0.3, 0.2, -0.1]), 0.8
    eye = torch.tensor([0.0, -4.0, 0.5])
    K, V = intrinsics(55, 40, 30), look_at(eye, [0.0, 0.0, 0.0])
    out = render(Scene([sphere(c, r, CLASS_ID["lamp"], 3, (0.5, 0.5, 0.5))]), K, V, 40, 30)
    _, d = get_rays(K, V, 40, 30)
    oc = eye - c
    b = d @ oc
    disc = b ** 2 - (oc @ oc - r * r)
    s = -b - torch.sqrt(disc.clamp_min(0))
    z = torch.where(disc > 0, s * (d @ V[2, :3]), torch.full_like(s, math.inf))
    hit = torch.isfinite(z)
    assert hit.sum() > 100 and (~hit).sum() > 100
    assert torch.equal(torch.isfinite(out["depth"]), hit)
    assert torch.allclose(out["depth"][hit], z[hit], atol=1e-4)
    assert (out["semantic"][hit] == CLASS_ID["lamp"]).all() and (out["semantic"][~hit] == -1).all()
    assert (out["instance"][hit] == 3).all() and (out["instance"][~hit] == -1).all()
    # normals: unit, equal to the analytic (p - c)/r
    P = unproject(out["depth"], K, V)
    n_true = (P - c) / r
    assert torch.allclose(out["normal"][hit], n_true[hit], atol=1e-3)


def test_render_matches_sphere_tracing_reference():
    room = make_room(seed=7)
    K = intrinsics(70, 48, 36)
    for V in inroom_path(room.meta["size"], 2, seed=1):
        out = render(room, K, V, 48, 36, shadows=False)
        o, d = get_rays(K, V, 48, 36)  # 1728 rays
        t, hit, prim = sphere_trace(room, o.reshape(-1, 3), d.reshape(-1, 3))
        z_ref = t * (d.reshape(-1, 3) @ V[2, :3])
        dep = out["depth"].reshape(-1)
        assert torch.equal(torch.isfinite(dep), hit) or (torch.isfinite(dep) != hit).float().mean() < 0.01
        both = torch.isfinite(dep) & hit
        close = (dep[both] - z_ref[both]).abs() < 2e-3
        assert close.float().mean() > 0.99
        same_cls = out["semantic"].reshape(-1)[both] == room.class_id[prim[both]]
        same_ins = out["instance"].reshape(-1)[both] == room.instance_id[prim[both]]
        assert same_cls.float().mean() > 0.99 and same_ins.float().mean() > 0.99


def test_yawed_box_and_cylinder_against_reference():
    sc = Scene([box([0.2, 0.1, 0.5], [1.0, 0.4, 0.6], 0.7, 4, 1, (1, 0, 0)),
                cylinder([-0.8, 0.3, 0.4], 0.3, 0.8, 5, 2, (0, 1, 0), yaw=0.3),
                sphere([0.9, -0.6, 0.3], 0.3, 6, 3, (0, 0, 1))])
    K, V = intrinsics(60, 40, 40), look_at([2.0, -3.0, 2.0], [0.0, 0.0, 0.4])
    out = render(sc, K, V, 40, 40)
    o, d = get_rays(K, V, 40, 40)
    t, hit, prim = sphere_trace(sc, o.reshape(-1, 3), d.reshape(-1, 3))
    dep = out["depth"].reshape(-1)
    agree = torch.isfinite(dep) == hit
    assert agree.float().mean() > 0.99
    both = torch.isfinite(dep) & hit
    z_ref = t * (d.reshape(-1, 3) @ V[2, :3])
    assert ((dep[both] - z_ref[both]).abs() < 2e-3).float().mean() > 0.99
    assert (out["instance"].reshape(-1)[both] == sc.instance_id[prim[both]]).float().mean() > 0.99


def test_cross_view_depth_and_labels_agree():
    room = make_room(seed=3)
    K = intrinsics(70, 64, 48)
    Va, Vb = inroom_path(room.meta["size"], 8, seed=2)[[0, 1]]
    A, B = render(room, K, Va, 64, 48), render(room, K, Vb, 64, 48)
    P = unproject(A["depth"], K, Va).reshape(-1, 3)
    ok = torch.isfinite(P).all(-1)
    uv, z = project(P[ok], K, Vb)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (z > 0) & (col >= 0) & (col < 64) & (row >= 0) & (row < 48)
    zb = torch.full_like(z, math.inf)
    zb[inside] = B["depth"][row[inside], col[inside]]
    visible = inside & ((zb - z).abs() < 0.02 * z)
    assert visible.sum() > 300, "the two views should overlap"
    # visible points carry the same labels in both views
    sem_a = A["semantic"].reshape(-1)[ok][visible]
    sem_b = B["semantic"][row[visible], col[visible]]
    ins_a = A["instance"].reshape(-1)[ok][visible]
    ins_b = B["instance"][row[visible], col[visible]]
    assert (sem_a == sem_b).float().mean() > 0.97 and (ins_a == ins_b).float().mean() > 0.97
    # most of what lands inside B in front of its surface is seen (occlusion test is not everything)
    assert visible.float().sum() / inside.float().sum() > 0.5


@pytest.mark.parametrize("name", OBJECT_CLASSES)
def test_every_class_renders(name):
    sc = object_gallery_scene(name, seed=1)
    info = sc.meta["objects"][0]
    h = info["height"]
    K = intrinsics(60, 48, 48)
    seen = set()
    for V in [look_at([3.0, 2.0, 2.0], [0, 0, h / 2]), look_at([-3.0, -1.0, 1.5], [0, 0, h / 2])]:
        seen |= set(render(sc, K, V, 48, 48)["semantic"].unique().tolist())
    assert CLASS_ID[name] in seen


def test_room_layout_invariants_and_determinism():
    for seed in range(6):
        room = make_room(seed)
        assert room.primitives == make_room(seed).primitives
        W, D = room.meta["size"]
        objs = room.meta["objects"]
        assert len(objs) >= 3
        for o in objs:
            assert abs(o["position"][0]) <= W / 2 and abs(o["position"][1]) <= D / 2
        for i, a in enumerate(objs):  # bounding circles do not overlap
            for b in objs[i + 1:]:
                dist = math.dist(a["position"], b["position"])
                assert dist > math.hypot(*a["footprint"]) + math.hypot(*b["footprint"])
        # all object primitives stay inside the room's walls (bounding boxes of the parts)
        for p in room.primitives:
            if p.class_id >= 3:
                r = math.hypot(p.half[0], p.half[1])
                assert abs(p.center[0]) - r < W / 2 + 0.05 and abs(p.center[1]) - r < D / 2 + 0.05
    assert make_room(0).primitives != make_room(1).primitives


def test_sample_points_lie_on_visible_surfaces():
    room = make_room(seed=2)
    pc = sample_points(room, 4000, seed=0)
    d = sdf(room, pc["points"])
    assert d.amin(-1).abs().max() < 1e-3               # on some surface
    assert (d > -1e-3).all()                           # inside none
    # the label is that of a primitive the point lies on
    on = d.abs() < 1e-3
    lab_ok = (on & (room.class_id[None] == pc["semantic"][:, None]) & (room.instance_id[None] == pc["instance"][:, None])).any(-1)
    assert lab_ok.all()
    assert torch.allclose(pc["normals"].norm(dim=-1), torch.ones(4000), atol=1e-4)
    assert set(pc["semantic"].unique().tolist()) >= {CLASS_ID["floor"], CLASS_ID["wall"]}
    W, D = room.meta["size"]
    assert (pc["points"][:, 0].abs() <= W / 2 + 1e-3).all() and (pc["points"][:, 2] >= -1e-3).all()


def test_caption_and_near_duplicate():
    room = make_room(seed=4)
    cap = caption(room)
    for o in room.meta["objects"]:
        assert o["cls"] in cap and o["color"] in cap
    dup = near_duplicate(room, seed=1, move_one=True)
    assert len(dup) == len(room)
    moved = dup.meta["moved_instance"]
    assert moved is not None
    for p, q in zip(room.primitives, dup.primitives):
        shifted = not np.allclose(p.center, q.center)
        assert shifted == (p.instance_id == moved and p.class_id >= 3)
        assert p.class_id == q.class_id and p.half == q.half
    same = near_duplicate(room, seed=1, move_one=False)
    assert all(np.allclose(p.center, q.center) for p, q in zip(room.primitives, same.primitives))


@pytest.mark.parametrize("fn,msg", [
    (lambda: box([0, 0, 0], [1, -1, 1], 0.0, 3, 1, (1, 0, 0)), "size"),
    (lambda: sphere([0, 0, 0], 1.0, 99, 1, (1, 0, 0)), "class_id"),
    (lambda: sphere([0, 0, 0], 1.0, 3, 1, (2, 0, 0)), "color"),
    (lambda: cylinder([0, 0, float("nan")], 1.0, 1.0, 3, 1, (1, 0, 0)), "center"),
    (lambda: make_object("spaceship", np.random.default_rng(0)), "class: unknown value 'spaceship'"),
    (lambda: Scene([]), "primitives"),
    (lambda: render(make_room(0), intrinsics(60, 8, 8), torch.eye(3), 8, 8), "viewmat: expected shape"),
])
def test_bad_input(fn, msg):
    with pytest.raises(ValueError, match=msg):
        fn()
