"""How close the pure-PyTorch rasterizer comes to the CPU's limit (issue 17 item 5).

gsplat cannot serve as a CPU peer (its PyTorch reference composites with a CUDA kernel), so this measures our
rasterizer against two things timed in the same run:

* the **work it does**: the (pixel, Gaussian) pairs the tiled path composites (every pixel of every tile a splat's
  box overlaps), of which those with α ≥ 1/255 are the ones that change the image; per pair, the colour sum is a
  matrix product (2·D FLOPs forward, 4·D backward: the gradients of the weights and of the colours), plus ~25
  element-wise operations for α, transmittance and their gradients. "Achieved GFLOP/s" counts only the 6·D
  matrix-product FLOPs per listed pair — the part that could run at matmul speed;
* the **limit**: the GFLOP/s of a float32 matrix product [B·64, M] × [M, D] of the same shape class, and of a large
  square one (the machine's matmul peak with these threads; the higher of the two is the peak);
* the **brute force**: the same compositing code with one tile covering the image, i.e. every Gaussian at every
  pixel, untiled (at 64×64, where it fits in memory), against the tiled path on the same scene.

    python bench/bench_rasterizer_limits.py --threads 1     # 64 channels, 128x128, 10k and 50k Gaussians
"""
import argparse, os, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rasterizer import make_scene                               # the scene of the rasterizer benchmark
from condense_nb.cameras import intrinsics
from condense_nb.gaussians import (project_gaussians, covariance_3d, splat_extent, tile_bins, rasterize_tiles, conic,
                                   splat_alpha, ALPHA_MIN, TILE_SIZE)


def median_time(fn, reps: int) -> float:
    ts = []
    for r in range(reps + 1):
        t0 = time.perf_counter(); fn(); dt = time.perf_counter() - t0
        if r: ts.append(dt)
    return sorted(ts)[len(ts) // 2]


def matmul_gflops(m: int, k: int, n: int, reps: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / median_time(lambda: a @ b, reps) / 1e9


def setup(n: int, D: int, size: int, tile: int):
    means, quats, scales, opac, colors = make_scene(n, D, size, "cpu")
    K, V = intrinsics(60, size, size), torch.eye(4)
    proj = project_gaussians(means, covariance_3d(quats, scales), V, K, size, size)
    bins = tile_bins(proj.means2d, splat_extent(proj.cov2d, opac), proj.depths, proj.valid, size, size, tile_size=tile)
    return proj, opac, colors, bins


def pairs(proj, opac, bins, tile: int) -> tuple[int, int]:
    "(listed, with α ≥ 1/255) pixel–splat pairs of the tiled path."
    ntx = bins.n_tiles[0]
    local = torch.arange(tile * tile)
    hit = 0
    for s in range(0, len(bins.tile_ids), 4096):
        t, g = bins.tile_ids[s:s + 4096], bins.gauss_ids[s:s + 4096]
        px = ((t % ntx)[:, None] * tile + local % tile) + 0.5
        py = ((t // ntx)[:, None] * tile + local // tile) + 0.5
        a = splat_alpha(px - proj.means2d[g, 0:1], py - proj.means2d[g, 1:2], conic(proj.cov2d)[g][:, None], opac[g][:, None])
        hit += int((a >= ALPHA_MIN).sum())
    return len(bins.tile_ids) * tile * tile, hit


def fwd_bwd(proj, opac, colors, bins, size: int, tile: int):
    m2, cn, op, co = (x.detach().clone().requires_grad_() for x in (proj.means2d, conic(proj.cov2d), opac, colors))
    img, alpha = rasterize_tiles(m2, cn, op, co, bins, size, size, tile_size=tile)
    (img.square().mean() + alpha.mean()).backward()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--brute-n", type=int, default=10_000, help="Gaussians of the brute-force comparison (at --brute-size)")
    ap.add_argument("--brute-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    D = a.channels
    try: load = os.getloadavg()[0]
    except OSError: load = float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load avg {load:.1f}; {D} channels, forward + backward")
    square = matmul_gflops(2048, 2048, 2048, a.reps)
    shaped = matmul_gflops(64 * 64, 256, D, a.reps)                  # 64 tiles x 64 pixels, 256 splats, D channels
    peak = max(square, shaped)
    print(f"float32 matmul: 2048^3 {square:7.1f} GFLOP/s, [4096 x 256] x [256 x {D}] {shaped:7.1f} GFLOP/s; peak used below {peak:.1f}")
    for n in a.n:
        proj, opac, colors, bins = setup(n, D, a.size, TILE_SIZE)
        listed, hit = pairs(proj, opac, bins, TILE_SIZE)
        s = median_time(lambda: fwd_bwd(proj, opac, colors, bins, a.size, TILE_SIZE), a.reps)
        gf = 6 * D * listed / s / 1e9
        print(f"tiled  N={n:>7,} {a.size}x{a.size}: {s * 1e3:8.1f} ms; {listed / 1e6:7.2f} M listed pairs ({hit / listed:5.1%} with α ≥ 1/255), "
              f"{listed / s / 1e6:6.1f} M pairs/s, {gf:6.1f} GFLOP/s of colour products = {gf / peak:5.1%} of the matmul peak")
    proj, opac, colors, bins = setup(a.brute_n, D, a.brute_size, TILE_SIZE)
    t_tiled = median_time(lambda: fwd_bwd(proj, opac, colors, bins, a.brute_size, TILE_SIZE), a.reps)
    one = tile_bins(proj.means2d, splat_extent(proj.cov2d, opac), proj.depths, proj.valid, a.brute_size, a.brute_size, tile_size=a.brute_size)
    t_brute = median_time(lambda: fwd_bwd(proj, opac, colors, one, a.brute_size, a.brute_size), max(1, a.reps // 2))
    print(f"brute force (one tile = the image) N={a.brute_n:,} {a.brute_size}x{a.brute_size}: {t_brute * 1e3:8.1f} ms; "
          f"{len(one.tile_ids) * a.brute_size ** 2 / 1e6:.1f} M pairs; tiled {t_tiled * 1e3:.1f} ms: tiled is {t_brute / t_tiled:.1f}x faster")


if __name__ == "__main__":
    main()
