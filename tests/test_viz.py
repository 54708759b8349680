"Tests for condense_nb.viz: label/depth colouring, view grids, exact camera frusta, the view slider, atomic figure saving."
import math
import numpy as np
import pytest
import torch
import matplotlib
from matplotlib.figure import Figure
from PIL import Image
from condense_nb.viz import (label_palette, colorize_labels, class_legend, colorize_depth, view_grid, frustum_lines,
                             plot_scene_3d, view_slider, save_figure)
from condense_nb.cameras import look_at, intrinsics, get_rays
from condense_nb.scenes import CLASSES


# ---------------------------------------------------------------- labels

def test_same_class_same_colour_across_calls_and_images():
    a = torch.tensor([[3, 0, 1], [3, 3, 2]])
    b = torch.tensor([[5, 3], [-1, 7]])                       # other classes around class 3, other shape
    ca, cb = colorize_labels(a, 8), colorize_labels(b, 20)    # even with another num_classes
    assert ca.shape == (2, 3, 3) and ca.dtype == np.float32
    ref = ca[0, 0]
    for c in (ca[1, 0], ca[1, 1], cb[0, 1]): np.testing.assert_array_equal(c, ref)
    np.testing.assert_array_equal(colorize_labels(a, 8), ca)  # deterministic
    np.testing.assert_array_equal(colorize_labels(b.numpy(), 20), cb)  # numpy in, same colours


def test_ignore_is_black_and_classes_are_distinct():
    lab = torch.arange(-1, 40).reshape(1, -1)
    c = colorize_labels(lab, 40)
    np.testing.assert_array_equal(c[0, 0], np.zeros(3))                            # -1 -> black
    cols = c[0, 1:]
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1) + np.eye(40) * 10
    assert d.min() > 0.05                                                          # 40 distinguishable colours
    assert (cols.sum(-1) > 0.3).all()                                              # none of them is (near) black
    c2 = colorize_labels(torch.tensor([255, 2]), 3, ignore=255)                    # a custom ignore value
    np.testing.assert_array_equal(c2[0], np.zeros(3)); np.testing.assert_array_equal(c2[1], label_palette(3)[2])


def test_label_palette_is_prefix_stable_and_labels_checked():
    np.testing.assert_array_equal(label_palette(7), label_palette(50)[:7])
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"): colorize_labels(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="labels: expected integer labels"): colorize_labels(torch.tensor([0.5]), 3)
    with pytest.raises(ValueError, match="labels"): colorize_labels(torch.tensor([-2, 0]), 3)


def test_class_legend_names_present_classes():
    fig = Figure(); ax = fig.subplots()
    leg = class_legend(ax, ["a", "b", "c", "d"], present=torch.tensor([[3, 1], [3, -1]]))
    assert [t.get_text() for t in leg.get_texts()] == ["b", "d"]
    np.testing.assert_allclose(leg.legend_handles[1].get_facecolor()[:3], label_palette(4)[3], atol=1e-6)


# ---------------------------------------------------------------- depth

def _lut_index(rgb, cmap="viridis"):  # nearest entry of the 256-colour LUT, an independent reading of the colour
    lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    return np.linalg.norm(rgb[:, None, :] - lut[None], axis=-1).argmin(1)


def test_depth_ramp_is_monotone_along_colormap():
    ramp = torch.linspace(0.5, 9.0, 200)[None]                  # [1, 200], increasing
    rgb = colorize_depth(ramp)[0]
    idx = _lut_index(rgb)
    assert (np.diff(idx) >= 0).all() and idx[0] == 0 and idx[-1] == 255
    lum = rgb @ np.array([0.2126, 0.7152, 0.0722])              # perceptual: lightness rises with depth
    assert (np.diff(lum) > 0).all()


def test_depth_inf_nan_black_and_explicit_range():
    d = torch.tensor([[1.0, math.inf, -math.inf, math.nan, 3.0]])
    rgb = colorize_depth(d)
    np.testing.assert_array_equal(rgb[0, 1:4], np.zeros((3, 3)))
    assert rgb[0, 0].sum() > 0 and rgb[0, 4].sum() > 0          # finite depths are never black
    # explicit range: values clip to the ends, the middle maps to the middle of the colormap
    rgb = colorize_depth(torch.tensor([[0.0, 2.0, 5.0, 10.0]]), vmin=2.0, vmax=8.0)[0]
    assert list(_lut_index(rgb)) == [0, 0, 128, 255] or list(_lut_index(rgb)) == [0, 0, 127, 255]
    assert colorize_depth(torch.full((2, 2), math.inf)).sum() == 0           # nothing hit: all black, no error
    assert np.isfinite(colorize_depth(torch.full((2, 2), 3.0))).all()        # constant depth: no division by zero


# ---------------------------------------------------------------- view grid

def _fake_view(H=6, W=8, seed=0, extra=True):
    g = torch.Generator().manual_seed(seed)
    v = dict(rgb=torch.rand(H, W, 3, generator=g), depth=1 + torch.rand(H, W, generator=g),
             semantic=torch.randint(-1, len(CLASSES), (H, W), generator=g))
    v["depth"][0, 0] = math.inf
    if extra:
        v["instance"] = torch.randint(-1, 5, (H, W), generator=g)
        v["normal"] = torch.nn.functional.normalize(torch.randn(H, W, 3, generator=g), dim=-1)
    return v


def test_view_grid_axes_count_and_titles():
    views = [_fake_view(seed=i) for i in range(3)]
    fig = view_grid(views)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 5
    assert [ax.get_title() for ax in fig.axes[:5]][0] == "rgb"
    assert [ax.get_title().split()[0] for ax in fig.axes[:5]] == ["rgb", "depth", "semantic", "instance", "normal"]
    assert [fig.axes[5 * r].get_ylabel() for r in range(3)] == ["view 0", "view 1", "view 2"]
    assert len(fig.legends) == 1
    # the semantic panel shows the palette colours of the labels
    sem_img = np.asarray(fig.axes[2].images[0].get_array())
    np.testing.assert_allclose(sem_img, colorize_labels(views[0]["semantic"], len(CLASSES)))


def test_view_grid_stacked_dict_and_optional_columns():
    vs = [_fake_view(seed=i, extra=False) for i in range(2)]
    stacked = {k: torch.stack([v[k] for v in vs]) for k in vs[0]}
    assert len(view_grid(stacked).axes) == 2 * 3
    assert len(view_grid(vs[0]).axes) == 3                                   # a single view dict
    mixed = [_fake_view(seed=0), _fake_view(seed=1, extra=False)]             # optional columns only if all have them
    assert len(view_grid(mixed).axes) == 2 * 3
    with pytest.raises(ValueError, match=r"views\[0\]: missing key\(s\) \['semantic'\]"):
        view_grid([{"rgb": vs[0]["rgb"], "depth": vs[0]["depth"]}])
    with pytest.raises(ValueError, match=r"views\[0\]\['depth'\]: expected shape \[6, 8\]"):
        view_grid([dict(vs[0], depth=torch.ones(5, 8))])


# ---------------------------------------------------------------- frusta

def _corners_by_hand(K, viewmat, W, H, depth):  # independent: x_c = depth * K^-1 (u+.5, v+.5, 1), world = R^T (x_c - t)
    K, V = np.asarray(K, np.float64), np.asarray(viewmat, np.float64)
    R, t = V[:3, :3], V[:3, 3]
    out = []
    for u, v in ((0, 0), (W - 1, 0), (W - 1, H - 1), (0, H - 1)):            # TL, TR, BR, BL corner pixels
        xc = depth * np.linalg.solve(K, np.array([u + 0.5, v + 0.5, 1.0]))
        out.append(R.T @ (xc - t))
    return np.stack(out), -R.T @ t


def test_frustum_lines_hand_computed_case():
    # camera at the origin looking along +x, z up: right = -y, down = -z. f = 1, principal point (1, 1), 2x2 image:
    # the top-left pixel centre (0.5, 0.5) has camera ray (-0.5, -0.5, 1) -> world (1, 0.5, 0.5) per unit z-depth.
    K, V = intrinsics(90, 2, 2), look_at([0., 0, 0], [1., 0, 0])
    fl = frustum_lines(K, V, 2, 2, depth=2.0)
    assert fl.shape == (16, 3)
    np.testing.assert_allclose(fl[1], [2.0, 1.0, 1.0], atol=1e-6)           # top-left: left (+y) and up (+z)
    np.testing.assert_allclose(fl[3], [2.0, -1.0, 1.0], atol=1e-6)          # top-right
    np.testing.assert_allclose(fl[5], [2.0, -1.0, -1.0], atol=1e-6)         # bottom-right
    np.testing.assert_allclose(fl[7], [2.0, 1.0, -1.0], atol=1e-6)          # bottom-left


@pytest.mark.parametrize("depth", [0.3, 1.7])
def test_frustum_lines_match_independent_geometry(depth):
    K = torch.tensor([[50.0, 0, 18], [0, 45.0, 13], [0, 0, 1]])          # off-centre principal point, fx != fy
    V, W, H = look_at([1.0, -2.0, 1.5], [0.2, 0.5, 0.8]), 40, 30
    fl = frustum_lines(K, V, W, H, depth).numpy()
    corners, centre = _corners_by_hand(K, V, W, H, depth)
    np.testing.assert_allclose(fl[0:8:2], np.stack([centre] * 4), atol=1e-5)   # spokes start at the centre
    np.testing.assert_allclose(fl[1:8:2], corners, atol=1e-5)                  # ... and end at the corners
    rect = np.stack([corners, np.roll(corners, -1, 0)], 1).reshape(8, 3)       # TL-TR, TR-BR, BR-BL, BL-TL
    np.testing.assert_allclose(fl[8:], rect, atol=1e-5)
    # the corners lie on get_rays' corner rays
    _, d = get_rays(K, V, W, H)
    for (r, c), p in zip(((0, 0), (0, W - 1), (H - 1, W - 1), (H - 1, 0)), corners):
        v = (p - centre) / np.linalg.norm(p - centre)
        np.testing.assert_allclose(v, d[r, c].numpy(), atol=1e-5)


def test_plot_scene_3d_draws_exact_frusta():
    K = torch.tensor([[50.0, 0, 18], [0, 45.0, 13], [0, 0, 1]]); W, H = 40, 30
    Vs = torch.stack([look_at([1.0, -2.0, 1.5], [0.2, 0.5, 0.8]), look_at([-1.5, 1.0, 1.2], [0.0, 0.0, 0.5])])
    pts = torch.rand(500, 3); lab = torch.randint(0, 4, (500,))
    fig = plot_scene_3d(pts, lab, viewmats=Vs, K=K, width=W, height=H, frustum_depth=0.8, class_names=["a", "b", "c", "d"])
    tr = {t.name: t for t in fig.data}
    assert fig.layout.scene.aspectmode == "data"
    assert {"a", "b", "c", "d", "cameras"} <= set(tr)
    xyz = np.array([(x, y, z) for x, y, z in zip(tr["cameras"].x, tr["cameras"].y, tr["cameras"].z) if x is not None])
    assert xyz.shape == (2 * 16, 3)
    for i, V in enumerate(Vs):
        corners, centre = _corners_by_hand(K, V, W, H, 0.8)
        seg = xyz[16 * i:16 * (i + 1)]
        np.testing.assert_allclose(seg[0:8:2], np.stack([centre] * 4), atol=1e-5)
        np.testing.assert_allclose(seg[1:8:2], corners, atol=1e-5)
    # segments are separated: a gap (None) after every pair of vertices
    x = list(tr["cameras"].x)
    assert all(x[k] is None for k in range(2, len(x), 3))
    # every point is drawn once, in its class's trace, with its palette colour
    assert sum(len(tr[n].x) for n in "abcd") == 500
    assert tr["c"].marker.color == "#{:02x}{:02x}{:02x}".format(*np.round(label_palette(4)[2] * 255).astype(int))


def test_plot_scene_3d_rgb_subsample_and_errors():
    pts, rgb = torch.rand(3000, 3), torch.rand(3000, 3)
    fig = plot_scene_3d(pts, rgb, max_points=1000, labels=torch.zeros(3000, dtype=torch.long), class_names=["floor"])
    (t,) = fig.data
    assert len(t.x) == 1000 and t.text[0] == "floor"
    kept = np.stack([t.x, t.y, t.z], 1)
    assert np.isin(kept[:, 0], pts[:, 0].numpy()).all()                        # a subset of the input points
    assert len(np.unique(kept[:, 0])) == 1000                                  # without repeats
    again = plot_scene_3d(pts, rgb, max_points=1000).data[0]                   # seeded: the same subsample again
    np.testing.assert_array_equal(np.stack([again.x, again.y, again.z], 1), kept)
    with pytest.raises(ValueError, match=r"points: expected shape \[\*, 3\]"): plot_scene_3d(torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"colors: expected shape \[5, 3\]"): plot_scene_3d(torch.rand(5, 3), torch.rand(4, 3))
    with pytest.raises(ValueError, match="K: intrinsics are needed"): plot_scene_3d(torch.rand(5, 3), viewmats=torch.eye(4))


# ---------------------------------------------------------------- slider

def test_view_slider_callback_runs_for_first_and_last():
    views = [_fake_view(seed=i) for i in range(4)]
    w = view_slider(views)
    assert w.slider.min == 0 and w.slider.max == 3
    for i in (0, 3):
        fig = w.show(i)
        assert isinstance(fig, Figure) and len(fig.axes) == 5 and fig.axes[0].get_ylabel() == f"view {i}"
    w.slider.value = 3                                          # what a user dragging the slider triggers
    with pytest.raises(ValueError, match=r"index: expected an int in \[0, 4\)"): w.show(4)


# ---------------------------------------------------------------- saving

def test_save_figure_png_and_html_atomic(tmp_path):
    fig = view_grid([_fake_view()])
    p = save_figure(fig, tmp_path / "sub" / "grid.png")
    im = Image.open(p); im.verify()
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(f.name for f in (tmp_path / "sub").iterdir()) == ["grid.png"]      # no temp file left

    f3 = plot_scene_3d(torch.rand(50, 3), torch.randint(0, 3, (50,)))
    h = save_figure(f3, tmp_path / "scene.html")
    html = h.read_text()
    assert "<html>" in html[:200] and html.rstrip().endswith("</html>") and "Plotly.newPlot" in html
    assert "<script src=" not in html and "* plotly.js v" in html  # plotly.js embedded: opens offline
    d = tmp_path / "d"
    save_figure(f3, d / "a.html", include_plotlyjs="directory"); save_figure(f3, d / "b.html", include_plotlyjs="directory")
    assert sorted(f.name for f in d.iterdir()) == ["a.html", "b.html", "plotly.min.js"]
    assert 'src="plotly.min.js"' in (d / "a.html").read_text() and (d / "plotly.min.js").stat().st_size > 1_000_000
    assert sorted(f.name for f in tmp_path.iterdir()) == ["d", "scene.html", "sub"]


def test_save_figure_rejects_bad_input(tmp_path):
    f3 = plot_scene_3d(torch.rand(5, 3))
    with pytest.raises(ValueError, match="would not open offline"): save_figure(f3, tmp_path / "a.html", include_plotlyjs="cdn")
    with pytest.raises(ValueError, match="saved as .html"): save_figure(f3, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"saved as .png, .pdf or .svg"): save_figure(view_grid([_fake_view()]), tmp_path / "a.html")
    with pytest.raises(ValueError, match="fig: expected a matplotlib Figure or a plotly Figure"): save_figure(42, tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []
