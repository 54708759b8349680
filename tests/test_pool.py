"""The unlabelled pre-training pool: seeds disjoint from every split, parallel builds identical to serial ones,
resumable shard by shard, damaged shards named."""
import hashlib, json
import pytest
import torch
from condense_nb.pool import POOL_OFFSET, PoolConfig, PoolImages, build_pool, build_shard, pool_seeds, shard_paths
from condense_nb.datasets import PRESETS, room_plan
from condense_nb.rooms import make_room

CFG = PoolConfig(name="p", rooms=5, views_per_room=2, width=24, height=16, rooms_per_shard=2)


@pytest.mark.parametrize("preset", ["tiny", "small", "full"])
def test_pool_seeds_never_meet_a_split(preset):
    plan = room_plan(PRESETS[preset])
    used = {r["seed"] for r in plan} | {r["camera_seed"] for r in plan} | {r["points_seed"] for r in plan}
    pool = pool_seeds(PoolConfig.from_preset(preset))
    assert len(set(pool)) == len(pool) and not (set(pool) & used)


def test_shard_holds_the_rooms_of_its_seeds_and_no_labels(tmp_path):
    rec = build_shard(CFG, 2, tmp_path)                                  # the last, short shard: room 4 only
    assert rec["seeds"] == [POOL_OFFSET + 4] and rec["rooms"] == 1
    from safetensors.torch import load_file
    t = load_file(shard_paths(tmp_path, 2)[0])
    assert set(t) == {"rgb", "depth", "K", "viewmats"}                   # nothing semantic is stored
    from condense_nb.cameras import inroom_path, intrinsics
    from condense_nb.scenes import render
    scene = make_room(POOL_OFFSET + 4)
    V = inroom_path(scene.meta["size"], 2, seed=POOL_OFFSET + 4)[1]
    ref = render(scene, intrinsics(CFG.fov, 24, 16), V, 24, 16)
    assert torch.equal(t["rgb"][0, 1], (ref["rgb"] * 255).round().clamp(0, 255).to(torch.uint8))
    assert torch.allclose(t["depth"][0, 1].float(), ref["depth"], rtol=1e-3)


def test_parallel_build_equals_serial_and_resumes(tmp_path):
    a = build_pool(CFG, tmp_path / "a", workers=1, progress=False)
    b_root = tmp_path / "b"
    build_shard(CFG, 1, b_root / "p")                                    # as if an earlier build died after shard 1
    (b_root / "p" / "shards" / ".shard_00000.safetensors.tmp").write_bytes(b"partial")   # and mid-write of shard 0
    before = shard_paths(b_root / "p", 1)[0].stat().st_mtime_ns
    with pytest.raises(ValueError, match="no config.json"):
        build_pool(CFG, b_root, workers=2, progress=False)              # a folder that is not a pool is refused ...
    (b_root / "p" / "config.json").write_text(json.dumps(dict(format="condense-nb unlabelled pool", version=1, config=CFG.__dict__)))
    b = build_pool(CFG, b_root, workers=2, progress=False)              # ... a pool's own folder is finished
    assert shard_paths(b, 1)[0].stat().st_mtime_ns == before            # the finished shard was kept
    assert not list((b / "shards").glob(".*.tmp"))                      # leftovers of the interrupted write are gone
    for k in range(CFG.n_shards):
        assert shard_paths(a, k)[0].read_bytes() == shard_paths(b, k)[0].read_bytes()
    ds = PoolImages(b)
    assert len(ds) == 10 and ds[9].shape == (3, 16, 24) and 0 <= ds[9].min() and ds[9].max() <= 1
    assert ds.room_of.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert len(PoolImages(b, max_rooms=3)) == 6


def test_damage_and_misuse_are_named(tmp_path):
    root = build_pool(CFG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        build_pool(PoolConfig(name="p", rooms=6), tmp_path, progress=False)
    with pytest.raises(ValueError, match="workers"):
        build_pool(CFG, tmp_path, workers=0, progress=False)
    p = shard_paths(root, 0)[0]
    data = bytearray(p.read_bytes()); data[-3] ^= 0x10; p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00000.safetensors: sha256"):
        PoolImages(root)
    (root / "DONE").unlink()
    with pytest.raises(ValueError, match="no DONE"):
        PoolImages(root)


def test_cli_builds_the_query_sets(tmp_path, capsys):
    "`condense-nb pool --queries` builds both query sets of a preset (and not its pool): the same rooms and geometry, other colours."
    from condense_nb import cli
    from condense_nb.pool import query_set, read_pool_config, pool_rooms
    assert cli.main(["pool", "--preset", "tiny", "--queries", "--workers", "1", "--root", str(tmp_path)]) == 0
    own, shared = (tmp_path / query_set("tiny", s).name for s in (False, True))
    assert read_pool_config(own) == query_set("tiny") and read_pool_config(shared) == query_set("tiny", shared=True)
    assert (own / "DONE").exists() and (shared / "DONE").exists() and not (tmp_path / "pool_tiny").exists()
    a, b = pool_rooms(own, 6), pool_rooms(shared, 6)
    assert [r["seed"] for r in a] == [r["seed"] for r in b]
    assert all(torch.equal(x["depth"], y["depth"]) and torch.equal(x["viewmats"], y["viewmats"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["rgb"], y["rgb"]) for x, y in zip(a, b))
    assert "queries_tiny_shared" in capsys.readouterr().out


def test_cli_max_rooms_builds_a_prefix_then_the_rest(tmp_path, capsys):
    "`condense-nb pool --max-rooms N` builds only the shards holding the first N rooms (no DONE); a run without it finishes the pool."
    from condense_nb import cli
    from condense_nb.pool import PoolConfig, shard_paths, pool_rooms
    cfg, root = PoolConfig(), tmp_path / PoolConfig().name                      # tiny: 16 rooms, 8 a shard
    args = ["pool", "--preset", "tiny", "--workers", "1", "--root", str(tmp_path)]
    assert cli.main(args + ["--max-rooms", "3"]) == 0
    assert shard_paths(root, 0)[0].exists() and not shard_paths(root, 1)[0].exists() and not (root / "DONE").exists()
    assert "first 8 of 16 rooms (1 of 2 shards)" in capsys.readouterr().out
    first = shard_paths(root, 0)[0].read_bytes()
    assert cli.main(args) == 0
    assert (root / "DONE").exists() and shard_paths(root, 0)[0].read_bytes() == first   # the prefix is kept, not rebuilt
    assert len(pool_rooms(root, cfg.rooms)) == cfg.rooms and "ready in" in capsys.readouterr().out
    for bad in (["--max-rooms", "0"], ["--max-rooms", "17"], ["--max-rooms", "2", "--queries"]):
        assert cli.main(args + bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--max-rooms" in err
