"Cameras against independent geometry: hand-built matrices, pixel-centre rays, round trips."
import math
import pytest
import torch
from condense_nb.cameras import intrinsics, look_at, get_rays, project, unproject, cam_to_world, camera_center, orbit_path, inroom_path


def test_intrinsics_from_fov():
    K = intrinsics(60.0, 200, 100)
    f = 100 / math.tan(math.radians(30))
    assert torch.allclose(K, torch.tensor([[f, 0, 100], [0, f, 50], [0, 0, 1.0]]))


@pytest.mark.parametrize("fov", [0, 180, -5, float("nan"), float("inf")])
def test_intrinsics_bad_fov(fov):
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics(fov, 64, 64)


def test_look_at_matches_hand_built_rotation():
    # camera on the -y axis looking at the origin: right = +x, down = -z, forward = +y
    V = look_at([0.0, -5.0, 0.0], [0.0, 0.0, 0.0])
    R = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert torch.allclose(V[:3, :3], R, atol=1e-6)
    assert torch.allclose(V[:3, 3], torch.tensor([0.0, 0, 5]), atol=1e-6)
    # a point above the origin appears above the image centre (smaller v)
    uv, z = project(torch.tensor([[0.0, 0.0, 1.0]]), intrinsics(90, 100, 100), V)
    assert uv[0, 1] < 50 and abs(uv[0, 0] - 50) < 1e-4 and abs(z[0] - 5) < 1e-5


@pytest.mark.parametrize("eye,target,msg", [([1, 2, 3], [1, 2, 3], "eye == target"), ([0, 0, 0], [0, 0, -2], "parallel to up"),
                                            ([0, 0, float("nan")], [1, 0, 0], "eye: contains NaN"), ([0, 0], [1, 0, 0], "eye: expected shape")])
def test_look_at_degenerate(eye, target, msg):
    with pytest.raises(ValueError, match=msg):
        look_at(eye, target)


def test_rays_pass_through_pixel_centres():
    torch.manual_seed(0)
    K, V = intrinsics(65, 20, 14), look_at([1.0, -4.0, 2.0], [0.3, 0.2, 0.5])
    o, d = get_rays(K, V, 20, 14)
    assert torch.allclose(d.norm(dim=-1), torch.ones(14, 20), atol=1e-6)
    assert torch.allclose(o, camera_center(V).expand_as(o))
    t = 1 + 5 * torch.rand(14, 20, 1)
    uv, z = project((o + t * d).reshape(-1, 3), K, V)
    vv, uu = torch.meshgrid(torch.arange(14.0) + 0.5, torch.arange(20.0) + 0.5, indexing="ij")
    assert torch.allclose(uv, torch.stack([uu, vv], -1).reshape(-1, 2), atol=1e-3)
    # z-depth = ray length times cosine to the optical axis
    assert torch.allclose(z, (t[..., 0] * (d @ V[2, :3])).reshape(-1), atol=1e-4)


def test_unproject_project_round_trip_and_inf():
    K, V = intrinsics(80, 12, 10), look_at([2.0, 2.0, 2.0], [0.0, 0.0, 0.0])
    depth = 1 + torch.rand(10, 12)
    depth[0, 0] = math.inf
    P = unproject(depth, K, V)
    assert not torch.isfinite(P[0, 0]).all()
    uv, z = project(P.reshape(-1, 3)[1:], K, V)
    assert torch.allclose(z, depth.reshape(-1)[1:], atol=1e-5)


def test_cam_to_world_inverts():
    V = look_at([3.0, -1.0, 2.0], [0.0, 1.0, 0.5])
    assert torch.allclose(cam_to_world(V) @ V, torch.eye(4), atol=1e-6)


def test_paths():
    orb = orbit_path([1.0, 2.0, 0.0], 2.0, 0.5, 6)
    c = torch.stack([camera_center(v) for v in orb])
    assert torch.allclose((c[:, :2] - torch.tensor([1.0, 2.0])).norm(dim=-1), torch.full((6,), 2.0), atol=1e-5)
    assert torch.allclose(c[:, 2], torch.full((6,), 0.5), atol=1e-5)
    # every orbit camera looks at the centre: it projects to the principal point
    K = intrinsics(60, 32, 32)
    for v in orb:
        uv, _ = project(torch.tensor([[1.0, 2.0, 0.0]]), K, v)
        assert torch.allclose(uv, torch.tensor([[16.0, 16.0]]), atol=1e-4)
    room = inroom_path([5.0, 4.0], 10, seed=3)
    assert torch.equal(room, inroom_path([5.0, 4.0], 10, seed=3)) and not torch.equal(room, inroom_path([5.0, 4.0], 10, seed=4))
    with pytest.raises(ValueError, match="room_size"):
        inroom_path([0.8, 4.0], 4)
