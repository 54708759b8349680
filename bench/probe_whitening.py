"""How the probes' whitening shrinkage was chosen: val (and test) numbers of the linear probes for several
shrinkages and without whitening, on cached frozen features.

The features are the ones pipeline 20_fit3d caches (`RUN/fit3d/features/{name}_{split}.safetensors`); a name
joined with '+' is the channel concatenation (FiT3D's concat). Choose on the val columns; the test columns are
printed only so that a reader can see what the choice did.

    python bench/probe_whitening.py --features runs/small/fit3d/features --data data --preset small \
        --names teacher,teacher+ft1 --shrinks none,0.01,0.1,1 --threads 1
"""
import argparse, time
from pathlib import Path
import torch
from condense_nb.datasets import build_preset, RoomViews
from condense_nb.probes import run_probes, seg_labels
from condense_nb.features import load_features, token_moments
from condense_nb.scenes import CLASSES


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="folder of cached features (pipeline 20's out_dir/features)")
    ap.add_argument("--data", default="data", help="datasets folder")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--names", default="teacher", help="comma-separated feature names; a+b concatenates")
    ap.add_argument("--shrinks", default="none,0.01,0.1,1", help="comma-separated shrinkages; 'none' = no whitening")
    ap.add_argument("--stride", type=int, default=2, help="train/val view stride (as the pipeline's preset)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lrs", default="3e-3,3e-2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fdir = Path(a.features)
    if not fdir.is_dir(): raise SystemExit(f"--features: {fdir} is not a folder")
    root = build_preset(a.preset, root=a.data, progress=False)

    def split_arrays(split, stride):
        ds = RoomViews(root, split)
        items = [ds[i] for i in range(len(ds)) if ds.index[i][1] % stride == 0]
        return (None, seg_labels(torch.stack([x["semantic"] for x in items]), len(CLASSES)), torch.stack([x["depth"] for x in items]))
    splits = {"train": split_arrays("train", a.stride), "val": split_arrays("val", a.stride), "test": split_arrays("test", 1)}

    def feats(name, split):
        parts = []
        for n in name.split("+"):
            p = fdir / f"{n}_{split}.safetensors"
            if not p.exists(): raise SystemExit(f"--names: no cached features {p}")
            parts.append(load_features(p)[0])
        return torch.cat(parts, 1)

    kw = dict(epochs=a.epochs, lrs=tuple(float(x) for x in a.lrs.split(",")))
    print(f"{'features':16s} {'shrink':>6s} | {'val mIoU':>8s} {'val RMSE':>8s} | {'test mIoU':>9s} {'test RMSE':>9s} | seconds")
    for name in a.names.split(","):
        F_ = {s: feats(name, s) for s in ("train", "val", "test")}
        lam = torch.linalg.eigvalsh(token_moments(F_["train"])[1]).clamp_min(0)
        print(f"{name}: {len(lam)} channels; train-token covariance: effective rank (Σλ)²/Σλ² = {float(lam.sum() ** 2 / (lam ** 2).sum()):.1f}, "
              f"top-10 directions hold {100 * float(lam.flip(0)[:10].sum() / lam.sum()):.1f} % of the variance", flush=True)
        for sh in a.shrinks.split(","):
            t0 = time.time()
            w = None if sh.strip() == "none" else float(sh)
            r = run_probes(None, splits, len(CLASSES), seeds=(a.seed,), features=F_, seg_kwargs=kw, depth_kwargs=kw, whiten=w)
            s, d = r["seg"]["per_seed"][0], r["depth"]["per_seed"][0]
            print(f"{name:16s} {sh:>6s} | {100 * s['val_mIoU']:8.1f} {d['val_rmse']:8.3f} | {100 * s['mIoU']:9.1f} {d['rmse']:9.3f} | "
                  f"{time.time() - t0:.0f}", flush=True)


if __name__ == "__main__":
    main()
