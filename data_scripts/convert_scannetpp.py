#!/usr/bin/env python
"""Convert one ScanNet++ DSLR scene into a self-contained nerfstudio folder that `NerfstudioScene` reads.

    python data_scripts/convert_scannetpp.py SCANNETPP/data/<scene_id> --out data/scannetpp/<scene_id> \\
        [--depth-dir SCANNETPP_RENDERS/<scene_id>/dslr/render_depth] [--split train|test|all] [--link]

ScanNet++ is distributed after registration: accept the terms of use on the dataset page and download the scenes
with the official download script. This script does not download; it takes a scene folder you downloaded (or a
.zip/.tar archive of one). It expects the pinhole images made by the ScanNet++ toolkit's `dslr/undistort.py`:
`dslr/undistorted_images/` and `dslr/nerfstudio/transforms_undistorted.json` (poses are already nerfstudio/OpenGL
camera->world). ScanNet++ DSLR has no sensor depth; `--depth-dir` adds depth maps you rendered from the mesh with the
toolkit (`common/render.py`: uint16 PNG in millimetres, 0 = invalid), named `<image stem>.png` and in the same
(undistorted) image geometry. The result is read back with `condense_nb.realdata.NerfstudioScene`. Not run in CI.
"""
from __future__ import annotations
import argparse, os, shutil, sys, tempfile
from pathlib import Path

try: import condense_nb  # noqa: F401
except ImportError: sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a source checkout

# The user is responsible for complying with the ScanNet++ terms of use (registration required; non-commercial research).
SCANNETPP_PAGE = "https://kaldir.vc.in.tum.de/scannetpp/"
SCANNETPP_TOOLKIT = "https://github.com/scannetpp/scannetpp"   # dslr/undistort.py, common/render.py


def _find_scene(root: Path) -> Path:
    if (root / "dslr").is_dir(): return root
    hits = sorted(p.parent for p in root.rglob("dslr") if p.is_dir())
    if not hits: raise ValueError(f"{root}: no dslr/ folder found; expected a ScanNet++ scene folder <data_root>/data/<scene_id>")
    return hits[0]


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink(): dst.unlink()
    if link: os.symlink(src.resolve(), dst)
    else: shutil.copyfile(src, dst)


def convert(scene: Path, out: Path, transforms: str, images: str, depth_dir: Path | None, split: str, every: int, link: bool) -> dict:
    "Write `out/transforms.json`, `out/images/`, `out/depth/` from a ScanNet++ scene folder; return counts."
    from condense_nb.core import load_json, save_json
    dslr = scene / "dslr"
    src_json, img_dir = dslr / transforms, dslr / images
    if not src_json.is_file(): raise ValueError(f"{src_json}: file not found; run the ScanNet++ toolkit's dslr/undistort.py first "
                                                f"(or pass --transforms nerfstudio/transforms.json for the raw fisheye images)")
    if not img_dir.is_dir(): raise ValueError(f"{img_dir}: image folder not found (see --images)")
    if depth_dir is not None and not depth_dir.is_dir(): raise ValueError(f"{depth_dir}: depth folder not found")
    meta = load_json(src_json)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f"{src_json}: expected a nerfstudio transforms file with a 'frames' list")
    chosen = [(f, "train") for f in meta["frames"]] if split in ("train", "all") else []
    if split in ("test", "all"):
        test = meta.get("test_frames") or []
        if test and not (img_dir / test[0].get("file_path", "")).is_file():
            print(f"note: test images of {scene.name} are not in {img_dir} (hidden test scene?); skipping test_frames")
            test = []
        chosen += [(f, "test") for f in test]
    chosen = chosen[::every]
    if not chosen: raise ValueError(f"{src_json}: no frames selected (split={split!r}, every={every})")
    frames = []
    for i, (fr, which) in enumerate(chosen):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise ValueError(f"{src_json}: frame {i} lacks 'file_path' or 'transform_matrix'")
        img = img_dir / fr["file_path"]
        if not img.is_file(): raise ValueError(f"{img}: image file not found")
        new = {k: v for k, v in fr.items() if k not in ("file_path", "depth_file_path", "mask_path")}
        new.update(file_path=f"images/{fr['file_path']}", split=which)
        _place(img, out / new["file_path"], link)
        if depth_dir is not None:
            dep = depth_dir / (Path(fr["file_path"]).stem + ".png")
            if not dep.is_file(): raise ValueError(f"{dep}: depth file not found for {fr['file_path']}")
            new["depth_file_path"] = f"depth/{dep.name}"
            _place(dep, out / new["depth_file_path"], link)
        frames.append(new)
    top = {k: v for k, v in meta.items() if k not in ("frames", "test_frames")}
    if depth_dir is not None: top["depth_unit_scale_factor"] = 1e-3     # ScanNet++ renders: uint16 millimetres
    save_json(out / "transforms.json", {**top, "frames": frames})
    return {"frames": len(frames), "test": sum(f["split"] == "test" for f in frames)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"Register at {SCANNETPP_PAGE}; the user is responsible for the ScanNet++ terms of use. "
                                        f"Toolkit: {SCANNETPP_TOOLKIT}")
    ap.add_argument("scene", type=Path, help="a ScanNet++ scene folder <data_root>/data/<scene_id>, or a .zip/.tar of one")
    ap.add_argument("--out", type=Path, help="output folder (default: data/scannetpp/<scene_id>)")
    ap.add_argument("--transforms", default="nerfstudio/transforms_undistorted.json", help="transforms file, relative to dslr/")
    ap.add_argument("--images", default="undistorted_images", help="image folder, relative to dslr/")
    ap.add_argument("--depth-dir", type=Path, help="folder of uint16 millimetre depth PNGs named <image stem>.png")
    ap.add_argument("--split", choices=("train", "test", "all"), default="train", help="'frames' (train), 'test_frames' or both")
    ap.add_argument("--every", type=int, default=1, help="keep every k-th frame")
    ap.add_argument("--link", action="store_true", help="symlink images/depth instead of copying (scene folders only)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = ap.parse_args(argv)
    if args.every < 1: raise ValueError(f"--every: expected >= 1, got {args.every}")
    from condense_nb.realdata import check_out_dir, safe_extract, NerfstudioScene

    with tempfile.TemporaryDirectory(prefix=".scannetpp.") as tmp:
        if args.scene.is_file():                               # an archive: unpack, then copy (links would dangle)
            scene, link = _find_scene(safe_extract(args.scene, tmp)), False
        elif args.scene.is_dir(): scene, link = _find_scene(args.scene), args.link
        else: raise ValueError(f"{args.scene}: not found")
        out = args.out or Path("data/scannetpp") / scene.name
        if check_out_dir(out, args.force).exists(): shutil.rmtree(out)
        counts = convert(scene, out, args.transforms, args.images, args.depth_dir, args.split, args.every, link)

    ds = NerfstudioScene(out, load_depth=args.depth_dir is not None)
    it = ds[0]
    msg = f"{counts['frames']} frames ({counts['test']} test), images {tuple(it['rgb'].shape)}"
    if "depth" in it:
        d = it["depth"][it["depth"].isfinite()]
        msg += f", frame 0 depth {d.min().item():.2f}..{d.max().item():.2f} m on {d.numel() / it['depth'].numel():.0%} of pixels" if d.numel() else ", frame 0 has no valid depth"
    print(msg)
    print(f"ScanNet++ scene {scene.name} is ready in {out}")
    return 0


if __name__ == "__main__":
    try: sys.exit(main())
    except ValueError as e: sys.exit(f"error: {e}")
