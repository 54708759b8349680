"Core helpers: argument checks and atomic writes."
import os
import pytest
import torch
from condense_nb.core import check_tensor, check_choice, atomic_write_text, save_json, load_json


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
