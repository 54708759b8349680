"""Pre-training throughput of the embedded teacher (DINO + iBOT) on CPU, for the `tiny` and `small` presets.

Times `train_step` (multi-crop augmentation, masked student + teacher forward, backward, AdamW, EMA) on
procedural images after warm-up steps, and prints images/s (wall clock and per CPU-second) with the
torch thread count, plus what that means for a full `small` run. Runs in well under 2 minutes.

    python bench/bench_teacher.py            # each preset's num_threads, else torch's default
    python bench/bench_teacher.py --threads 1
    python bench/bench_teacher.py --device cuda --presets small,full --peak-tflops 989   # H100 bf16 dense peak

"images per CPU-s" divides by the process's CPU time: on a busy machine it estimates what an idle core gives.
Model FLOPs per step are counted once with `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions
of the forward and backward passes); with `--peak-tflops` the script prints model-FLOPs utilisation (MFU).
"""
import argparse, dataclasses, os, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from condense_nb.teacher import from_preset, DinoState, train_step, toy_images, param_groups

DEFAULT_THREADS = torch.get_num_threads()


def bench(name: str, warmup: int, steps: int, budget_s: float, threads: int | None, precision: str, device: str) -> dict:
    cfg = dataclasses.replace(from_preset(name), precision=precision)
    torch.set_num_threads(threads or cfg.num_threads or DEFAULT_THREADS)   # as train_teacher would
    torch.manual_seed(0)
    state = DinoState(cfg).to(device)
    opt = torch.optim.AdamW(param_groups(state.student), lr=cfg.lr)
    images = toy_images(cfg.batch_size, cfg.global_size).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with FlopCounterMode(display=False) as fc: train_step(state, opt, images, cfg, 0)   # also the first warm-up step
    for s in range(1, warmup): train_step(state, opt, images, cfg, s)
    sync(); w0, c0, done = time.perf_counter(), time.process_time(), 0
    while done < steps and (done == 0 or time.perf_counter() - w0 < budget_s):
        train_step(state, opt, images, cfg, warmup + done); done += 1
    sync(); wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = done * cfg.batch_size
    return dict(preset=name, precision=precision, threads=torch.get_num_threads(), steps=done, batch=cfg.batch_size, img_s=n / wall,
                img_cpu_s=n / cpu, s_per_step=wall / done, full_run_min=cfg.steps * wall / done / 60, preset_steps=cfg.steps,
                tflops=fc.get_total_flops() * done / wall / 1e12)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's choice)")
    ap.add_argument("--presets", default="tiny,small", help="comma-separated presets (full needs a GPU)")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s at this precision, for MFU")
    args = ap.parse_args()
    try: load = os.getloadavg()[0]
    except OSError: load = float("nan")
    print(f"torch {torch.__version__}, default threads={DEFAULT_THREADS}, cpus={os.cpu_count()}, load avg(1 min)={load:.1f}")
    plan = dict(tiny=(2, 20, 5.0), small=(2, 3, 30.0), full=(3, 10, 60.0))
    for name in args.presets.split(","):
        for precision in args.precisions.split(","):
            r = bench(name, *plan[name], args.threads, precision, args.device)
            mfu = f", MFU {100 * r['tflops'] / args.peak_tflops:.1f}%" if args.peak_tflops else ""
            print(f"{r['preset']:6s} {r['precision']} threads={r['threads']} batch {r['batch']:3d} x {r['steps']:2d} steps: "
                  f"{r['img_s']:7.1f} images/s wall, {r['img_cpu_s']:7.1f} images per CPU-s, {r['s_per_step']:.3f} s/step, "
                  f"{r['tflops'] * 1e3:.0f} model GFLOP/s{mfu} -> {r['preset_steps']} steps of the preset ≈ {r['full_run_min']:.1f} min")


if __name__ == "__main__":
    main()
