"""A *label-supervised* ViT of the teacher's shape: the ceiling a frozen linear patch probe can reach on SynthRooms.

Not a teacher (the teacher never sees labels): a comparison row that says how far self-supervision could go with
this backbone, image size and probe. Trains the ViT end to end with a linear head (BatchNorm + 1x1 conv, the probe's
shape) on the *train* rooms' class maps, keeps the epoch with the best *val* mIoU, and saves the encoder so that
`bench/teacher_val.py --teacher supervised=OUT.safetensors` scores it with the frozen-feature probe like any teacher.

    python bench/teacher_ceiling.py --data data/small --out runs/small/supervised_vit.safetensors [--epochs 30]
"""
import argparse, json, math, sys, time
from pathlib import Path
import torch

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True); ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=30); ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4); ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    from condense_nb.datasets import RoomViews
    from condense_nb.encoders import DenseEncoder, load_teacher, save_encoder
    from condense_nb.probes import SegProbe, seg_loss, seg_labels, eval_seg_probe
    from condense_nb.scenes import CLASSES
    from condense_nb.core import seed_everything
    K = len(CLASSES)
    def split(name):
        ds = RoomViews(a.data, name); items = [ds[i] for i in range(len(ds))]
        return torch.stack([x["rgb"] for x in items]), seg_labels(torch.stack([x["semantic"] for x in items]), K)
    (xtr, ytr), (xva, yva) = split("train"), split("val")
    c = load_teacher("small").config                     # the shipped teacher's shape, so the rows compare
    seed_everything(a.seed)
    enc = DenseEncoder(c["name"], img_size=c.get("img_size"), frozen=False, **c.get("timm_kwargs", {}))
    head = SegProbe(enc.embed_dim, K)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
    steps = a.epochs * math.ceil(len(xtr) / a.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(a.seed); best = -1.0; size = ytr.shape[-2:]; log = []
    for ep in range(1, a.epochs + 1):
        t0 = time.time(); enc.train(); head.train(); tot = 0.0
        for idx in torch.randperm(len(xtr), generator=g).split(a.batch):
            x, y = xtr[idx], ytr[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5       # horizontal flips, the only augmentation
            x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
            loss = seg_loss(head(enc(x), size), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step(); tot += float(loss.detach()) * len(idx)
        enc.eval(); head.eval()
        with torch.no_grad(): fva = torch.cat([enc(xva[i:i + 64]) for i in range(0, len(xva), 64)])
        miou = eval_seg_probe(head, fva, yva, K)["mIoU"]
        log.append(dict(epoch=ep, train_loss=tot / len(xtr), val_mIoU_own_head=miou, seconds=time.time() - t0))
        print(f"epoch {ep:3d}: train loss {tot / len(xtr):.3f}  val mIoU (its own head) {100 * miou:.1f}  ({time.time() - t0:.0f} s)", flush=True)
        Path(a.out).with_suffix(".log.json").write_text(json.dumps(dict(args=vars(a), epochs=log), indent=1))
        if miou > best:
            best = miou
            frozen = DenseEncoder(c["name"], img_size=c.get("img_size"), **c.get("timm_kwargs", {}))
            frozen.model.load_state_dict(enc.model.state_dict())
            save_encoder(frozen, a.out, dict(kind="label-supervised ceiling (NOT a teacher)", epoch=ep, val_mIoU=miou,
                                             lr=a.lr, epochs=a.epochs, batch=a.batch, seed=a.seed))
    print(f"best val mIoU (own head) {100 * best:.1f}; encoder in {a.out}")

if __name__ == "__main__": sys.exit(main())
