#!/usr/bin/env python
"""Fetch ModelNet40 in PointNet's `ply_hdf5_2048` release and unpack it where `load_modelnet40_h5` reads it.

    python data_scripts/fetch_modelnet40.py --out data/modelnet40_ply_hdf5_2048
    python data_scripts/fetch_modelnet40.py --archive ~/Downloads/modelnet40_ply_hdf5_2048.zip   # no download

Needs the network (not run in CI). The h5 files are checked against their published MD5 sums and then read
back with `condense_nb.realdata.load_modelnet40_h5`, so a zip from a mirror is as good as the original.
"""
from __future__ import annotations
import argparse, hashlib, shutil, sys, tempfile
from pathlib import Path

try: import condense_nb  # noqa: F401
except ImportError: sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a source checkout

# The user is responsible for complying with the dataset licence: ModelNet (Princeton, https://modelnet.cs.princeton.edu/)
# is for academic research use; the h5 conversion is by the PointNet authors (Qi et al., CVPR 2017).
# The original host below has been unreliable for years; if it fails, fetch the same zip from a mirror you trust and
# pass it with --archive (the MD5 check below makes sure it holds the published files).
MODELNET40_URL = "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"
MODELNET40_MD5 = {  # per h5 file, as published alongside the data loaders that use this release
    "ply_data_train0.h5": "3176385ffc31a7b6b5af22191fd920d1",
    "ply_data_train1.h5": "e3f613fb500559403b34925112754dc4",
    "ply_data_train2.h5": "0c56e233a090ff87c3049d4ce08e7d8b",
    "ply_data_train3.h5": "9d2af465adfa33a3285c369f3ca66c45",
    "ply_data_train4.h5": "dff38de489b2c41bfaeded86c2208984",
    "ply_data_test0.h5": "e9732e6d83b09e79e9a7617df058adee",
    "ply_data_test1.h5": "aba4b12a67c34391cc3c015a6f08ed4b",
}
EXPECTED_COUNTS = {"train": 9840, "test": 2468}


def md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while (b := f.read(chunk)): h.update(b)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="The user is responsible for the ModelNet licence (academic use).")
    ap.add_argument("--out", type=Path, default=Path("data/modelnet40_ply_hdf5_2048"), help="folder that will hold the h5 files")
    ap.add_argument("--url", default=MODELNET40_URL, help="where to download the zip from (default: the original host)")
    ap.add_argument("--archive", type=Path, help="use this local zip instead of downloading")
    ap.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    ap.add_argument("--skip-md5", action="store_true", help="do not check the h5 files against the published MD5 sums")
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = ap.parse_args(argv)
    from condense_nb.realdata import check_out_dir, download, safe_extract, load_modelnet40_h5

    out: Path = check_out_dir(args.out, args.force)
    archive = args.archive or download(args.url, out.parent / "modelnet40_ply_hdf5_2048.zip")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".modelnet40.") as tmp:
        safe_extract(archive, tmp)
        found = sorted(Path(tmp).rglob("ply_data_train0.h5"))
        if not found: raise ValueError(f"{archive}: no ply_data_train0.h5 inside; is this modelnet40_ply_hdf5_2048.zip?")
        src = found[0].parent
        if not args.skip_md5:
            for name, want in MODELNET40_MD5.items():
                f = src / name
                if not f.is_file(): raise ValueError(f"{archive}: {name} is missing (pass --skip-md5 for a partial copy)")
                if (got := md5(f)) != want: raise ValueError(f"{archive}: {name}: MD5 mismatch (got {got}, expected {want})")
        if out.exists(): shutil.rmtree(out)
        shutil.move(str(src), str(out))
    if args.archive is None and not args.keep_archive: Path(archive).unlink()

    for split in ("train", "test"):
        pts, labels, names = load_modelnet40_h5(out, split)
        note = "" if len(pts) == EXPECTED_COUNTS[split] else f" (the full release has {EXPECTED_COUNTS[split]})"
        print(f"{split}: {len(pts)} shapes x {pts.shape[1]} points, {len(names)} classes, "
              f"labels {labels.min().item()}..{labels.max().item()}{note}")
    print(f"ModelNet40 is ready in {out}")
    return 0


if __name__ == "__main__":
    try: sys.exit(main())
    except ValueError as e: sys.exit(f"error: {e}")
