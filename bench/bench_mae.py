"""Pre-training throughput of the point MAE (condense_nb.mae): samples/s of full steps (tokenize + forward + backward + AdamW).

Usage: python bench/bench_mae.py [--presets tiny small] [--threads 1 2] [--steps 5] [--warmup 2] [--batch N] [--feat-dim 192] [--device cpu]
Random masks at the preset's ratio; with --feat-dim > 0 a 2D head and random 2D targets are included (the I2P-MAE step).
"""
import argparse, os, time
import torch
from condense_nb.mae import from_preset, PointMAE, make_optimizer, pretrain_step
from condense_nb.guidance import random_mask


def bench(preset, threads, steps, warmup, batch, feat_dim, device):
    torch.set_num_threads(threads)
    cfg = from_preset(preset, feat_dim=feat_dim or None, **({"batch_size": batch} if batch else {}))
    torch.manual_seed(0)
    model = PointMAE(cfg).to(device)
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    B = cfg.batch_size
    x = torch.randn(B, cfg.n_points, 3, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True)).to(device)
    t2d = torch.randn(B, cfg.n_groups, cfg.feat_dim, generator=g).to(device) if cfg.feat_dim else None
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(warmup + steps):
        masks = random_mask(B, cfg.n_groups, cfg.mask_ratio, g)
        sync(); t = time.perf_counter()
        pretrain_step(model, opt, x, masks, t2d, cfg)
        sync(); times.append(time.perf_counter() - t)
    t = sorted(times[warmup:])[len(times[warmup:]) // 2]              # median step time
    with torch.no_grad():
        t0 = time.perf_counter(); model.encoder.tokenize(x); sync(); t_tok = time.perf_counter() - t0
    n_par = sum(p.numel() for p in model.parameters())
    print(f"{preset:5s} threads={threads} batch={B:3d} N={cfg.n_points} G={cfg.n_groups}x{cfg.group_size} dim={cfg.dim} "
          f"depth={cfg.depth}+{cfg.decoder_depth} params={n_par / 1e6:.2f}M | step {1e3 * t:8.1f} ms "
          f"(tokenize {1e3 * t_tok:6.1f} ms) | {B / t:7.1f} samples/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--threads", nargs="+", type=int, default=sorted({1, torch.get_num_threads()}))
    ap.add_argument("--steps", type=int, default=5); ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0, help="override the preset's batch size")
    ap.add_argument("--feat-dim", type=int, default=192, help="2D target width (0: 3D loss only)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={a.device} torch={torch.__version__} cpus={os.cpu_count()} default threads={torch.get_num_threads()} "
          f"load avg(1 min)={load:.1f} feat_dim={a.feat_dim} (median of {a.steps} steps after {a.warmup} warm-up)")
    for preset in a.presets:
        for th in a.threads:
            bench(preset, th, a.steps, a.warmup, a.batch, a.feat_dim, a.device)


if __name__ == "__main__":
    main()
