"""Score teachers on the *validation* rooms, the way recipes and snapshots are chosen (`condense_nb.probe_stage.val_scores`):
linear segmentation probe (fit on train, best epoch on val; one seed) and the probe-free diagnostics of `condense_nb.diagnostics`.

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
    from condense_nb.encoders import DenseEncoder, load_teacher
    from condense_nb.probe_stage import ProbeStageConfig, room_views, val_scores
    from condense_nb.core import seed_everything, save_json
    cfg = ProbeStageConfig.from_preset("small", seeds=(0,), epochs=a.epochs, view_stride=a.stride)   # the protocol `choose_snapshot` uses
    (tr_x, tr_y, _, _), (va_x, va_y, _, va_room) = (room_views(Path(a.data), s, cfg.view_stride) for s in ("train", "val"))
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
        got = val_scores(enc, (tr_x, tr_y), (va_x, va_y, va_room), cfg)
        out[name] = dict(val_mIoU=got.pop("val_mIoU"), step=getattr(enc, "step", None), **got)
        print(f"{name:>24}: val mIoU {100 * out[name]['val_mIoU']:.1f}  purity {100 * got['purity']['purity']:.1f} "
              f"balanced {100 * got['purity']['balanced']:.1f}  room-id {100 * got['rooms']['top1']:.1f} (chance {100 * got['rooms']['chance']:.1f})  "
              f"(layout tokens {100 * got['rooms_by_tokens']['layout']['top1']:.1f}, object tokens {100 * got['rooms_by_tokens']['objects']['top1']:.1f})  "
              f"between-image var {100 * got['variance']['between']:.1f}%  ({time.time() - t0:.0f} s)", flush=True)
    if a.out: save_json(a.out, out)

if __name__ == "__main__": sys.exit(main())
