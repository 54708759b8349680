"Point ops against brute-force references written with plain Python/NumPy loops."
import numpy as np
import pytest
import torch
from condense_nb.pointops import fps, knn, chamfer_distance, group, gather_points, PointEmbed


def fps_reference(p, n):  # p [N, 3] numpy
    chosen = [0]
    for _ in range(n - 1):
        d = np.min([[np.sum((q - p[c]) ** 2) for c in chosen] for q in p], axis=1)
        chosen.append(int(np.argmax(d)))
    return chosen


def test_fps_matches_reference():
    rng = np.random.default_rng(0)
    for N, n in [(50, 10), (200, 32)]:
        p = rng.random((2, N, 3))
        got = fps(torch.tensor(p, dtype=torch.float64), n)
        for b in range(2):
            assert got[b].tolist() == fps_reference(p[b], n)


def test_fps_spread_beats_random():
    p = torch.rand(1, 2000, 3, generator=torch.Generator().manual_seed(1))
    sel = p[0, fps(p, 64)[0]]
    rnd = p[0, torch.randperm(2000, generator=torch.Generator().manual_seed(2))[:64]]
    min_gap = lambda s: torch.cdist(s, s).add(torch.eye(64) * 9).min()
    assert min_gap(sel) > min_gap(rnd)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(3)
    P, Q = rng.random((2, 500, 3)), rng.random((2, 40, 3))
    idx = knn(torch.tensor(Q), torch.tensor(P), 7, chunk=16)
    for b in range(2):
        for m in range(40):
            d = [np.sum((Q[b, m] - P[b, j]) ** 2) for j in range(500)]
            assert idx[b, m].tolist() == list(np.argsort(d, kind="stable")[:7])


def test_chamfer_matches_loops():
    rng = np.random.default_rng(4)
    A, B = rng.random((3, 30, 3)), rng.random((3, 45, 3))
    got = chamfer_distance(torch.tensor(A), torch.tensor(B))
    for b in range(3):
        ab = np.mean([min(np.sum((a - q) ** 2) for q in B[b]) for a in A[b]])
        ba = np.mean([min(np.sum((a - q) ** 2) for a in A[b]) for q in B[b]])
        assert abs(got[b].item() - (ab + ba)) < 1e-9
    assert torch.allclose(chamfer_distance(torch.tensor(A), torch.tensor(A)), torch.zeros(3, dtype=torch.float64))


def test_group_neighbourhoods_are_centre_relative():
    p = torch.rand(2, 400, 3)
    c, neigh, idx = group(p, 20, 10)
    assert torch.allclose(neigh + c[:, :, None], gather_points(p, idx))
    assert torch.allclose(c, gather_points(p, fps(p, 20)))


def test_point_embed_is_permutation_invariant():
    emb = PointEmbed(32, 16).eval()
    x = torch.randn(2, 5, 12, 3)
    assert torch.allclose(emb(x), emb(x[:, :, torch.randperm(12)]), atol=1e-5)


@pytest.mark.parametrize("fn,msg", [
    (lambda: fps(torch.rand(1, 10, 3), 11), "more samples than points"),
    (lambda: knn(torch.rand(1, 3, 3), torch.rand(1, 5, 3), 6), "k: expected"),
    (lambda: fps(torch.tensor([[[0.0, float("nan"), 0.0]]]), 1), "NaN"),
    (lambda: chamfer_distance(torch.rand(2, 4, 3), torch.rand(3, 4, 3)), "batch sizes differ"),
    (lambda: knn(torch.rand(1, 3, 2), torch.rand(1, 5, 3), 1), "query: expected shape"),
])
def test_bad_input(fn, msg):
    with pytest.raises(ValueError, match=msg):
        fn()
