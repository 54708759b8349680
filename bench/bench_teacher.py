"""Pre-training throughput of the embedded teacher (DINO + iBOT) on CPU, for the `tiny` and `small` presets.

Times `train_step` (multi-crop augmentation, masked student + teacher forward, backward, AdamW, EMA) on
procedural images after warm-up steps, and prints images/s (wall clock and per CPU-second) with the
torch thread count, plus what that means for a full `small` run. Runs in well under 2 minutes.

    python bench/bench_teacher.py            # each preset's num_threads, else torch's default
    python bench/bench_teacher.py --threads 1

"images per CPU-s" divides by the process's CPU time: on a busy machine it estimates what an idle core gives.
"""
import argparse, os, time
import torch
from condense_nb.teacher import from_preset, DinoState, train_step, toy_images, param_groups

DEFAULT_THREADS = torch.get_num_threads()


def bench(name: str, warmup: int, steps: int, budget_s: float, threads: int | None) -> dict:
    cfg = from_preset(name)
    torch.set_num_threads(threads or cfg.num_threads or DEFAULT_THREADS)   # as train_teacher would
    torch.manual_seed(0)
    state = DinoState(cfg)
    opt = torch.optim.AdamW(param_groups(state.student), lr=cfg.lr)
    images = toy_images(cfg.batch_size, cfg.global_size)
    for s in range(warmup): train_step(state, opt, images, cfg, s)
    w0, c0, done = time.perf_counter(), time.process_time(), 0
    while done < steps and (done == 0 or time.perf_counter() - w0 < budget_s):
        train_step(state, opt, images, cfg, warmup + done); done += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = done * cfg.batch_size
    return dict(preset=name, threads=torch.get_num_threads(), steps=done, batch=cfg.batch_size, img_s=n / wall, img_cpu_s=n / cpu,
                s_per_step=wall / done, full_run_min=cfg.steps * wall / done / 60, preset_steps=cfg.steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's choice)")
    args = ap.parse_args()
    try: load = os.getloadavg()[0]
    except OSError: load = float("nan")
    print(f"torch {torch.__version__}, default threads={DEFAULT_THREADS}, cpus={os.cpu_count()}, load avg(1 min)={load:.1f}")
    for name, warmup, steps, budget in [("tiny", 2, 20, 5.0), ("small", 1, 3, 30.0)]:
        r = bench(name, warmup, steps, budget, args.threads)
        print(f"{r['preset']:6s} threads={r['threads']} batch {r['batch']:3d} x {r['steps']:2d} steps: {r['img_s']:7.1f} images/s wall, "
              f"{r['img_cpu_s']:7.1f} images per CPU-s, {r['s_per_step']:.3f} s/step "
              f"-> {r['preset_steps']} steps of the preset ≈ {r['full_run_min']:.1f} min")


if __name__ == "__main__":
    main()
