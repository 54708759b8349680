"""Score teachers on the *validation* rooms, the way recipes are chosen: linear segmentation probe (fit on train,
best epoch on val; one seed) and the probe-free diagnostics of `condense_nb.diagnostics`.

    python bench/teacher_val.py --data data/small --teacher NAME=PATH [--teacher NAME=PATH ...] [--random] [--shipped small]

PATH is a teacher.safetensors or a training run folder (its latest checkpoint's EMA teacher is used).
Prints one line per teacher and writes the numbers as JSON (--out). Never touches the test rooms."""
import argparse, json, sys, time
from pathlib import Path
import torch

def teacher_from(path: Path):
    "A teacher.safetensors, or a training run's checkpoint folder (the one holding latest.json): its EMA teacher."
    from condense_nb.encoders import load_encoder
    from condense_nb.teacher import TeacherConfig, DinoState, teacher_encoder
    from condense_nb.core import load_checkpoint
    if path.suffix == ".safetensors": return load_encoder(path)
    if not (path / "latest.json").exists() and (path / "ckpt" / "latest.json").exists(): path = path / "ckpt"   # the run folder itself
    got = load_checkpoint(path)
    if got is None: sys.exit(f"--teacher {path}: neither a .safetensors file nor a checkpoint folder (no latest.json)")
    step, tensors, meta = got
    cfg = TeacherConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    state = DinoState(cfg); state.load_state_dict(tensors)
    enc = teacher_encoder(state, cfg); enc.step = step
    return enc

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True); ap.add_argument("--teacher", action="append", default=[])
    ap.add_argument("--random", action="store_true", help="add a random-init ViT of the first teacher's shape")
    ap.add_argument("--shipped", action="append", default=[], help="add a shipped teacher by preset name (e.g. small)")
    ap.add_argument("--stride", type=int, default=2); ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1); ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from condense_nb.datasets import RoomViews
    from condense_nb.encoders import DenseEncoder, load_teacher
    from condense_nb.probes import seg_labels, fit_seg_probe
    from condense_nb.features import extract_features, fit_whitening, apply_whitening
    from condense_nb.diagnostics import feature_diagnostics
    from condense_nb.scenes import CLASSES
    from condense_nb.core import seed_everything, save_json
    K = len(CLASSES)
    def split(name):
        ds = RoomViews(a.data, name)
        idx = [i for i in range(len(ds)) if ds.index[i][1] % a.stride == 0]
        items = [ds[i] for i in idx]
        return (torch.stack([x["rgb"] for x in items]), seg_labels(torch.stack([x["semantic"] for x in items]), K),
                torch.tensor([ds.index[i][0] for i in idx]))
    tr, va = split("train"), split("val")
    encs = {}
    for spec in a.teacher:
        name, p = spec.split("=", 1); encs[name] = teacher_from(Path(p))
    for s in a.shipped: encs[f"shipped {s}"] = load_teacher(s)
    if a.random:
        c = next(iter(encs.values())).config; seed_everything(0)
        encs["random-init ViT"] = DenseEncoder(c["name"], img_size=c.get("img_size"), **c.get("timm_kwargs", {}))
    out = {}
    for name, enc in encs.items():
        t0 = time.time()
        ftr, fva = extract_features(enc, tr[0]), extract_features(enc, va[0])
        diag = feature_diagnostics(fva, va[1], va[2], K, patch=tr[0].shape[-1] // ftr.shape[-1])
        W = fit_whitening(ftr, 0.1)
        _, hist = fit_seg_probe(apply_whitening(ftr, *W), tr[1], apply_whitening(fva, *W), va[1], K, seed=0, epochs=a.epochs, lrs=(3e-3, 3e-2))
        out[name] = dict(val_mIoU=hist["best"]["val"]["mIoU"], step=getattr(enc, "step", None), **diag)
        print(f"{name:>24}: val mIoU {100 * out[name]['val_mIoU']:.1f}  purity {100 * diag['purity']['purity']:.1f} "
              f"balanced {100 * diag['purity']['balanced']:.1f}  room-id {100 * diag['rooms']['top1']:.1f} (chance {100 * diag['rooms']['chance']:.1f})  "
              f"between-image var {100 * diag['variance']['between']:.1f}%  ({time.time() - t0:.0f} s)", flush=True)
    if a.out: save_json(a.out, out)

if __name__ == "__main__": sys.exit(main())
