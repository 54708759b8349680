#!/usr/bin/env python
"""Render throughput of the SynthRooms ray caster on this machine (CPU unless --device is given).

    python bench/bench_render.py                      # 128x128, 6 rooms x 8 views
    python bench/bench_render.py --size 224 --rooms 4 --threads 1

Prints plain lines, e.g. `render 128x128: 21.3 views/s (2 threads)`.
"""
import argparse, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    p = argparse.ArgumentParser(description="SynthRooms render throughput")
    p.add_argument("--size", type=int, nargs="+", default=[128], help="square image sizes (default: 128)")
    p.add_argument("--rooms", type=int, default=6, help="rooms (typical procedural rooms, seeds 0..rooms-1)")
    p.add_argument("--views", type=int, default=8, help="views per room")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-shadows", action="store_true")
    args = p.parse_args(argv)
    import torch
    from condense_nb.cameras import intrinsics, inroom_path
    from condense_nb.scenes import render
    from condense_nb.rooms import make_room
    if args.threads: torch.set_num_threads(args.threads)
    rooms = [make_room(s) for s in range(args.rooms)]
    prims = [len(r) for r in rooms]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rooms} rooms with "
          f"{min(prims)}-{max(prims)} primitives (mean {statistics.mean(prims):.0f}), {args.views} views each")
    for size in args.size:
        K = intrinsics(75, size, size)
        cams = [inroom_path(r.meta["size"], args.views, seed=i) for i, r in enumerate(rooms)]
        render(rooms[0], K, cams[0][0], size, size, shadows=not args.no_shadows)          # warm-up
        t0, c0, per_room = time.perf_counter(), time.process_time(), []
        for r, vs in zip(rooms, cams):
            t = time.perf_counter()
            for v in vs: render(r, K, v, size, size, shadows=not args.no_shadows)
            per_room.append((time.perf_counter() - t) / len(vs))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = args.rooms * args.views
        print(f"render {size}x{size}: {n / dt:.1f} views/s ({torch.get_num_threads()} threads); "
              f"per view {1e3 * min(per_room):.0f}-{1e3 * max(per_room):.0f} ms across rooms; "
              f"{1e3 * cpu / n:.0f} ms CPU time per view; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
