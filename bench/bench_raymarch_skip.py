"""Empty-space skipping in the ray marcher on a realistic sparse scene (issue 17 item 4).

The scene is a SynthRooms room (`rooms.make_room`): 200k labelled surface points fused into a 64³ occupancy grid
over the room's box; the density grid is 30 on the occupied voxels (a surface shell, most of the volume empty), the
feature grid 32 random channels. Rays: every 2nd pixel of 8 in-room views at 128×96 (`cameras.inroom_path`, the
datasets' camera path), 64 stratified samples each. Timed, forward:

* `render_rays` dense (every sample evaluated) and with `occupancy=` (the occupancy grid dilated by one voxel:
  only samples near a surface are evaluated; outside it the density is exactly 0, so the output is the same);
* nerfacc's dense path (its `render_weight_from_density` on the same samples, `F.grid_sample` for the grids);
* nerfacc's occupancy-grid estimator (`OccGridEstimator.sampling`) where it runs (its marching is a CUDA kernel).

    python bench/bench_raymarch_skip.py --threads 1
"""
import argparse, os, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_raymarch import with_nerfacc
from timing import best_time
from condense_nb.cameras import intrinsics, get_rays, inroom_path
from condense_nb.raymarch import render_rays, fuse_occupancy
from condense_nb.scenes import sample_points
from condense_nb.rooms import make_room


def room_grids(seed: int, res: int, channels: int):
    room = make_room(seed)
    pts = sample_points(room, 200_000, seed=seed)["points"]
    aabb = torch.stack([pts.min(0).values, pts.max(0).values]) + torch.tensor([[-0.05], [0.05]])
    shell = fuse_occupancy(pts, aabb, res, dilate=0)                  # [res]^3, 1 on voxels holding surface points
    density = 30.0 * shell[None]
    occupancy = fuse_occupancy(pts, aabb, res, dilate=1)
    feats = torch.randn(channels, res, res, res, generator=torch.Generator().manual_seed(seed))
    return room, aabb, density, occupancy, feats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, default=64); ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--samples", type=int, default=64); ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2, help="every STRIDE-th pixel of each 128x96 view")
    ap.add_argument("--threads", type=int, default=None); ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    room, aabb, dens, occ, feat = room_grids(a.seed, a.res, a.channels)
    K = intrinsics(60, 128, 96)
    rays = [get_rays(K, v, 128, 96) for v in inroom_path(torch.tensor(room.meta["size"]), a.views, seed=a.seed)]
    o = torch.cat([r[0][::a.stride, ::a.stride].reshape(-1, 3) for r in rays])
    d = torch.cat([r[1][::a.stride, ::a.stride].reshape(-1, 3) for r in rays])
    d = F.normalize(d, dim=-1)
    try: load = os.getloadavg()[0]
    except OSError: load = float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load avg {load:.1f}; room seed {a.seed}, {a.res}^3 grids, "
          f"{occ.mean():.1%} of voxels in the dilated occupancy ({(dens > 0).float().mean():.1%} with density); "
          f"{len(o):,} rays x {a.samples} samples, {a.channels} channels, forward")
    with torch.no_grad():
        dense = lambda: render_rays(feat, dens, aabb, o, d, a.samples)
        skip = lambda: render_rays(feat, dens, aabb, o, d, a.samples, occupancy=occ)
        ref, fast = dense(), skip()
        diff = (ref["values"] - fast["values"]).abs().max().item()
        td, ts = best_time(dense), best_time(skip)
        print(f"ours, dense          : {td * 1e3:8.1f} ms  {ref['n_evaluated']:>10,} samples evaluated")
        print(f"ours, occupancy skip : {ts * 1e3:8.1f} ms  {fast['n_evaluated']:>10,} samples evaluated "
              f"({fast['n_evaluated'] / ref['n_evaluated']:.1%}); {td / ts:.2f}x the dense path; max |difference| {diff:.2e}")
        try: import nerfacc
        except ImportError: print("nerfacc: skipped (pip install nerfacc)"); return
        tn = best_time(lambda: with_nerfacc(feat, dens, aabb, o, d, a.samples))
        dn = (with_nerfacc(feat, dens, aabb, o, d, a.samples) - ref["values"]).abs().max().item()
        print(f"nerfacc {nerfacc.__version__} dense    : {tn * 1e3:8.1f} ms  (max |difference| to ours {dn:.2e}); "
              f"ours with skipping {tn / ts:.2f}x faster than nerfacc's dense path")
        try:
            est = nerfacc.OccGridEstimator(roi_aabb=aabb.flatten(), resolution=a.res)
            est.binaries = occ.permute(2, 1, 0).bool()[None]          # nerfacc's grid is x-major
            t0 = time.perf_counter()
            est.sampling(o, d, render_step_size=float((aabb[1] - aabb[0]).norm() / a.samples))
            print(f"nerfacc OccGridEstimator.sampling: {1e3 * (time.perf_counter() - t0):.1f} ms")
        except Exception as e:
            print(f"nerfacc OccGridEstimator: does not run here, its marching is a CUDA extension ({type(e).__name__}: {str(e).splitlines()[0][:120]})")


if __name__ == "__main__":
    main()
