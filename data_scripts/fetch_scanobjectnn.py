#!/usr/bin/env python
"""Unpack the user's ScanObjectNN `h5_files.zip` where `load_scanobjectnn_h5` / `scanobjectnn_path` read it.

    python data_scripts/fetch_scanobjectnn.py ~/Downloads/h5_files.zip --out data/scanobjectnn

ScanObjectNN is distributed after registration: agree to the terms of use on the project page and the authors send a
download link. This script therefore does not download; it takes the archive you downloaded, unpacks it safely
(`main_split/`, `main_split_nobg/`, `split1..4/`), and reads every variant's train/test files back with
`condense_nb.realdata.load_scanobjectnn_h5`. Not run in CI.
"""
from __future__ import annotations
import argparse, shutil, sys, tempfile
from pathlib import Path

try: import condense_nb  # noqa: F401
except ImportError: sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a source checkout

# The user is responsible for complying with the ScanObjectNN terms of use (registration on the project page;
# research use). Project page and paper: Uy et al., "Revisiting Point Cloud Classification", ICCV 2019.
SCANOBJECTNN_PAGE = "https://hkust-vgd.github.io/scanobjectnn/"
SCANOBJECTNN_ARCHIVE = "h5_files.zip"
EXPECTED_COUNTS = {"PB_T50_RS": (11416, 2882), "OBJ_BG": (2309, 581), "OBJ_ONLY": (2309, 581)}   # (train, test), full release


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"Register and download {SCANOBJECTNN_ARCHIVE} from {SCANOBJECTNN_PAGE}; "
                                        "the user is responsible for its terms of use.")
    ap.add_argument("archive", type=Path, help=f"the {SCANOBJECTNN_ARCHIVE} you downloaded (a .zip or .tar)")
    ap.add_argument("--out", type=Path, default=Path("data/scanobjectnn"), help="folder that will hold main_split/ etc.")
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = ap.parse_args(argv)
    from condense_nb.realdata import check_out_dir, safe_extract, load_scanobjectnn_h5, scanobjectnn_path, SCANOBJECTNN_VARIANTS

    out: Path = check_out_dir(args.out, args.force)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".scanobjectnn.") as tmp:
        safe_extract(args.archive, tmp)
        found = sorted(p for p in Path(tmp).rglob("main_split") if p.is_dir() and "__MACOSX" not in p.parts)
        if not found: raise ValueError(f"{args.archive}: no main_split/ folder inside; is this ScanObjectNN's {SCANOBJECTNN_ARCHIVE}?")
        src = found[0].parent
        shutil.rmtree(src / "__MACOSX", ignore_errors=True)
        if out.exists(): shutil.rmtree(out)
        shutil.move(str(src), str(out))

    seen = 0
    for variant in SCANOBJECTNN_VARIANTS:
        paths = [scanobjectnn_path(out, variant, split) for split in ("train", "test")]
        if not all(p.is_file() for p in paths): continue
        counts = []
        for p in paths:
            pts, labels, mask = load_scanobjectnn_h5(p)
            counts.append(len(pts))
            bg = "" if mask is None else f", {(mask == -1).float().mean().item():.0%} background points"
            print(f"{variant:9s} {p.relative_to(out)}: {len(pts)} x {pts.shape[1]} points, labels "
                  f"{labels.min().item()}..{labels.max().item()}{bg}")
        if variant in EXPECTED_COUNTS and tuple(counts) != EXPECTED_COUNTS[variant]:
            print(f"  note: the full release has {EXPECTED_COUNTS[variant]} (train, test) for {variant}")
        seen += 1
    if not seen: raise ValueError(f"{out}: none of the known variants ({', '.join(SCANOBJECTNN_VARIANTS)}) has both train and test files")
    print(f"ScanObjectNN is ready in {out}")
    return 0


if __name__ == "__main__":
    try: sys.exit(main())
    except ValueError as e: sys.exit(f"error: {e}")
