#!/usr/bin/env python
"""Build the synthetic SynthRooms + SynthShapes datasets of a preset into ROOT/PRESET/.

    python data_scripts/build_synthetic.py --preset tiny            # seconds
    python data_scripts/build_synthetic.py --preset small --root data
    python data_scripts/build_synthetic.py --preset small --overwrite
    python data_scripts/build_synthetic.py --preset small --threads 1   # on a machine shared with other jobs

The build is resumable: rerun the same command after an interruption and finished rooms are kept.
The same as `condense-nb data --preset PRESET`. See nbs/04_datasets.ipynb for the layout and the splits.
"""
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing


def main(argv=None) -> int:
    from condense_nb.datasets import PRESETS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="dataset size (default: tiny)")
    p.add_argument("--root", default="data", help="datasets folder (default: data)")
    p.add_argument("--overwrite", action="store_true", help="delete a previous build of this preset and rebuild it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice); 1 is much faster when other jobs share the CPU cores")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1: p.error(f"--threads: expected >= 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    from condense_nb.datasets import build_preset
    t = time.time()
    try:
        path = build_preset(args.preset, root=args.root, progress=not args.quiet, overwrite=args.overwrite)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"dataset {args.preset!r} ready in {path} ({time.time() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
