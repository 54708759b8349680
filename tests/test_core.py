"Core helpers: argument checks, the cosine schedule, safetensors bytes and atomic writes."
import math
import os
import numpy as np
import pytest
import torch
from condense_nb.core import (check_tensor, check_choice, check_int, check_number, cosine_schedule, st_bytes,
                              atomic_write_text, save_json, load_json)


def test_check_tensor_shapes_and_values():
    assert check_tensor([[1, 2, 3]], "p", (None, 3)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"p: expected shape \[\*, 3\], got \[1, 2\]"):
        check_tensor([[1, 2]], "p", (None, 3))
    with pytest.raises(ValueError, match="p: contains NaN"):
        check_tensor([float("nan")], "p")
    assert torch.isinf(check_tensor([float("inf")], "d", finite=False)).all()


def test_check_choice():
    with pytest.raises(ValueError, match="preset: unknown value 'x'"):
        check_choice("x", "preset", ["tiny"])


def test_check_int():
    assert check_int(3, "n") == 3 and check_int(0, "seed", 0) == 0 and check_int(-2, "k", -5) == -2
    v = check_int(np.int32(7), "n", 1, 7)
    assert v == 7 and type(v) is int
    with pytest.raises(ValueError, match=r"^epochs: expected a positive int \(an int >= 1\), got 0$"): check_int(0, "epochs")
    with pytest.raises(ValueError, match=r"^seed: expected a non-negative int \(an int >= 0\), got -1$"): check_int(-1, "seed", 0)
    with pytest.raises(ValueError, match=r"^window: expected an int >= 2, got 1$"): check_int(1, "window", 2)
    with pytest.raises(ValueError, match=r"^n: expected an int in \[1, 4\], got 5$"): check_int(5, "n", 1, 4)
    for bad in (True, False, np.bool_(True), 1.0, np.float64(2.0), "3", None, [1]):
        with pytest.raises(ValueError, match="n: expected a"): check_int(bad, "n", 0)


def test_check_number():
    assert check_number(3, "x") == 3.0 and type(check_number(np.float32(0.5), "p", 0, 1)) is float
    assert check_number(0, "w", 0) == 0.0 and check_number(1, "p", 0, 1) == 1.0
    with pytest.raises(ValueError, match=r"^lr: expected a positive number \(a number > 0\), got 0$"): check_number(0, "lr", 0, lo_open=True)
    with pytest.raises(ValueError, match=r"^w: expected a non-negative number \(a number >= 0\), got -0.1$"): check_number(-0.1, "w", 0)
    with pytest.raises(ValueError, match=r"^p: expected a number in \(0, 1\), got 1.0$"): check_number(1.0, "p", 0, 1, True, True)
    with pytest.raises(ValueError, match=r"^p: expected a number in \[0, 1\), got 1$"): check_number(1, "p", 0, 1, hi_open=True)
    with pytest.raises(ValueError, match=r"^t: expected a number <= 2, got 3$"): check_number(3, "t", hi=2)
    with pytest.raises(ValueError, match=r"^t: expected a number > -1, got -1$"): check_number(-1, "t", -1, lo_open=True)
    for bad in (float("nan"), float("inf"), -math.inf, np.float32("nan"), True, np.bool_(False), "1", None, torch.tensor(1.0)):
        with pytest.raises(ValueError, match="x: expected a finite number"): check_number(bad, "x")


def _cosine_reference(step, total, start, end, warmup_steps=0, warmup_start=0.0):
    "The closed form, written independently: linear ramp, then start + (end - start) * (1 - cos(pi t)) / 2, held after `total`."
    if step < warmup_steps: return warmup_start + (start - warmup_start) * (step / warmup_steps)
    if step >= total: return end
    t = (step - warmup_steps) / (total - warmup_steps)
    return start + (end - start) * (1 - math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("args", [(100, 1.0, 0.0, 10, 0.0), (100, 5e-4, 1e-6, 0, 0.0), (300, 1e-3, 1e-6, 10, 1e-6),
                                  (40, 0.04, 0.07, 0, 0.0), (7, 2.0, 1.0, 0, 0.0), (25, 0.996, 1.0, 5, 0.9)])
def test_cosine_schedule_closed_form(args):
    total, start, end, w, w0 = args
    steps = sorted({0, 1, w - 1, w, w + 1, (w + total) // 2, total - 1, total, total + 3} - {-1})
    for s in steps:
        assert math.isclose(cosine_schedule(s, total, start, end, w, w0), _cosine_reference(s, total, start, end, w, w0),
                            rel_tol=1e-12, abs_tol=1e-15), (args, s)
    assert cosine_schedule(w, total, start, end, w, w0) == start              # the warm-up ends exactly at `start`
    assert cosine_schedule(total, total, start, end, w, w0) == end            # ... and the cosine exactly at `end`
    if w: assert cosine_schedule(0, total, start, end, w, w0) == w0
    for x in (0.25, w + 0.5, total - 0.5):                                    # fractional steps (epochs)
        assert math.isclose(cosine_schedule(x, total, start, end, w, w0), _cosine_reference(x, total, start, end, w, w0), rel_tol=1e-12)


def test_cosine_schedule_without_a_cosine_phase():
    "total <= warmup_steps (e.g. a temperature that only warms up): warm-up, then `end` from the step after it."
    assert cosine_schedule(0, 5, 0.04, 0.04, 5, 0.02) == 0.02 and math.isclose(cosine_schedule(3, 5, 0.04, 0.04, 5, 0.02), 0.032)
    assert cosine_schedule(5, 5, 0.1, 0.2, 5, 0.0) == 0.1 and cosine_schedule(6, 5, 0.1, 0.2, 5, 0.0) == 0.2
    assert cosine_schedule(0, 1, 0.1, 0.2) == 0.1 and cosine_schedule(1, 1, 0.1, 0.2) == 0.2


def test_st_bytes_round_trip():
    from safetensors.torch import load
    x = torch.arange(12.).reshape(3, 4).T                                      # not contiguous
    b = st_bytes({"x": x, "i": torch.arange(3)}, {"scene_id": "5"})
    back = load(b)
    assert torch.equal(back["x"], x) and torch.equal(back["i"], torch.arange(3))
    assert st_bytes({"x": x}, {"a": "1"}) == st_bytes({"x": x.contiguous()}, {"a": "1"})


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    # a failure during the write leaves the old file intact and no temp file behind
    real_replace = os.replace
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(p, "new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert p.read_text() == "old" and sorted(f.name for f in tmp_path.iterdir()) == ["a.txt"]


def test_json_round_trip_and_errors(tmp_path):
    save_json(tmp_path / "x.json", {"a": [1, 2]})
    assert load_json(tmp_path / "x.json") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: malformed JSON"):
        load_json(tmp_path / "bad.json")
