"""Ray-marcher throughput: rays/s and samples/s for feature rendering through a dense grid
(64 samples per ray, 32 channels, 64^3 grid), our pure-PyTorch path beside the same work done with
nerfacc's dense volume-rendering weights plus `F.grid_sample` (skipped if nerfacc is not installed:
`pip install nerfacc`, CPU works for its dense path).

    python bench/bench_raymarch.py [--rays 16384] [--samples 64] [--channels 32] [--res 64] [--threads 1] [--device cpu]
"""
import argparse, os, time
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_time
import torch.nn.functional as F
from condense_nb.raymarch import ray_aabb, stratified_samples, sample_grid, volume_render


def ours(feat, dens, aabb, o, d, S):
    tn, tf, hit = ray_aabb(o, d, aabb)
    ts, te = stratified_samples(tn, torch.where(hit, tf, tn), S, perturb=False)
    mids = (o[:, None] + d[:, None] * ((ts + te) / 2)[..., None]).reshape(-1, 3)
    sig = sample_grid(dens, aabb, mids)[:, 0].clamp_min(0).reshape(ts.shape)
    val = sample_grid(feat, aabb, mids).reshape(*ts.shape, -1)
    return volume_render(sig, val, ts, te)["values"]


def with_nerfacc(feat, dens, aabb, o, d, S):
    from nerfacc.volrend import render_weight_from_density
    tn, tf, hit = ray_aabb(o, d, aabb)
    ts, te = stratified_samples(tn, torch.where(hit, tf, tn), S, perturb=False)
    mids = o[:, None] + d[:, None] * ((ts + te) / 2)[..., None]
    g = ((mids - aabb[0]) / (aabb[1] - aabb[0]) * 2 - 1).reshape(1, -1, 1, 1, 3)
    inside = ((mids >= aabb[0]) & (mids <= aabb[1])).all(-1)
    both = F.grid_sample(torch.cat([dens, feat])[None], g, align_corners=False)[0, :, :, 0, 0].T.reshape(*ts.shape, -1)
    both = both * inside[..., None]
    w, _, _ = render_weight_from_density(ts, te, both[..., 0].clamp_min(0))
    return (w[..., None] * both[..., 1:]).sum(-2)




def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rays", type=int, default=16384); ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--channels", type=int, default=32); ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None); ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(a.channels, a.res, a.res, a.res, generator=g).to(dev)
    dens = (torch.rand(1, a.res, a.res, a.res, generator=g) * 5).to(dev)
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]], device=dev)
    o = (torch.tensor([0.0, 0, -3]) + torch.randn(a.rays, 3, generator=g) * 0.05).to(dev)
    d = F.normalize(torch.tensor([0.0, 0, 1]) + torch.randn(a.rays, 3, generator=g) * 0.2, dim=-1).to(dev)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, load average {load:.1f}; "
          f"{a.rays} rays x {a.samples} samples, {a.channels} channels, {a.res}^3 grid (forward)")
    with torch.no_grad():
        t = best_time(lambda: ours(feat, dens, aabb, o, d, a.samples))
        print(f"condense_nb.raymarch     : {a.rays / t:12,.0f} rays/s  {a.rays * a.samples / t:14,.0f} samples/s  ({1e3 * t:.1f} ms)")
        try:
            import nerfacc
        except ImportError:
            print("nerfacc + F.grid_sample : skipped (pip install nerfacc)"); return
        t2 = best_time(lambda: with_nerfacc(feat, dens, aabb, o, d, a.samples))
        diff = (ours(feat, dens, aabb, o, d, a.samples) - with_nerfacc(feat, dens, aabb, o, d, a.samples)).abs().max().item()
        print(f"nerfacc {nerfacc.__version__} + grid_sample: {a.rays / t2:12,.0f} rays/s  {a.rays * a.samples / t2:14,.0f} samples/s  "
              f"({1e3 * t2:.1f} ms); ours/nerfacc time {t / t2:.2f}x; max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
