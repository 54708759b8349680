#!/usr/bin/env python
"""Build time of the synthetic dataset presets, into a temporary folder (deleted afterwards).

    python bench/bench_build.py                  # tiny and small (small takes minutes)
    python bench/bench_build.py --presets tiny
    python bench/bench_build.py --presets small --threads 1

Prints plain lines, e.g. `build tiny: 12.3 s (14 rooms, 84 views, 6 shape sets, 5.1 MB, 2 threads)`.
"""
import argparse, os, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    from condense_nb.datasets import PRESETS
    p = argparse.ArgumentParser(description="dataset build times")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(PRESETS))
    p.add_argument("--progress", action="store_true", help="show the progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice; 1 is faster on a busy machine)")
    args = p.parse_args(argv)
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    from condense_nb.datasets import build_preset, get_preset, room_plan, shape_plan
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.presets:
        cfg = get_preset(name)
        with tempfile.TemporaryDirectory() as d:
            t, c = time.perf_counter(), time.process_time()
            path = build_preset(name, root=d, progress=args.progress)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            t = time.perf_counter(); build_preset(name, root=d, progress=False); again = time.perf_counter() - t
        n_rooms = len(room_plan(cfg))
        print(f"build {name}: {dt:.1f} s ({n_rooms} rooms, {n_rooms * cfg.views_per_room} views at {cfg.width}x{cfg.height}, "
              f"{len(shape_plan(cfg))} shape sets, {size / 1e6:.1f} MB, {torch.get_num_threads()} threads); "
              f"{cpu:.1f} s CPU time; rerun {again:.2f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
