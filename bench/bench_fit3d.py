"""FiT3D's two stages, timed on one SynthRooms room with the settings of pipeline 20_fit3d at preset `small`.

Stage 1 (`lifting.lift_scene`): seconds per scene, iterations/s, Gaussians at the end and the final PSNR of one
train room (`train_0000` of the `small` data plan, built on the fly into a temporary folder with
`datasets.build_room`, then read back as the pipeline's `load_views` reads it: uint8 RGB / 255, z-depth, K,
world→camera matrices), lifted with the shipped `small` teacher and
`LiftConfig.from_preset("small", iterations=200, n_max=4000, densify_from=50, densify_until=150,
densify_every=50, max_gaussians=10_000)`.
Stage 2 (`finetune.finetune`): images/s (wall clock and per CPU-second) of fine-tuning a trainable copy of the
teacher on that room's rendered features with `FinetuneConfig.from_preset("small")` (batch 2), timed per step
after warm-up steps in the same call (same optimizer), targets rendered online as in the pipeline.

    python bench/bench_fit3d.py                              # 200 iterations, 20 views of 128x96, 20 fine-tuning steps
    python bench/bench_fit3d.py --threads 1
    python bench/bench_fit3d.py --device cuda
    python bench/bench_fit3d.py --threads 1 --iterations 10 --views 4 --width 64 --height 48 --ft-steps 3   # smoke test

"per CPU-s" divides by the process's CPU time: on a busy machine it estimates what an idle core gives. Stage 1's
time per scene is the wall time of `lift_scene` (teacher features of every view, initialisation from depth and the
optimisation steps); the pipeline's `seconds_per_scene` also includes reading the room from disk.
"""
import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # run from a checkout without installing

import torch
from condense_nb.datasets import get_preset, room_plan, build_room, _load_st, VIEW_KEYS
from condense_nb.encoders import load_teacher
from condense_nb.gaussians import _gsplat_available
from condense_nb.lifting import LiftConfig, lift_scene
from condense_nb.finetune import FinetuneConfig, finetune, trainable_copy

DEFAULT_THREADS = torch.get_num_threads()
# pipeline 20_fit3d, DEFAULTS["small"]["lift"] (Stage 1 overrides of the `small` LiftConfig)
SMALL_LIFT = dict(iterations=200, n_max=4000, densify_from=50, densify_until=150, densify_every=50, max_gaussians=10_000)


def room_views(views: int, width: int, height: int, room: int = 0) -> tuple[str, dict, float]:
    "Build train room `room` of the `small` plan (with `views` views of width×height) and return (scene_id, views, seconds)."
    cfg = get_preset("small", views_per_room=views, width=width, height=height)
    item = [r for r in room_plan(cfg) if r["split"] == "train"][room]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_fit3d_") as tmp:
        folder = build_room(item, cfg, Path(tmp) / item["scene_id"])
        v = _load_st(folder / "views.safetensors", VIEW_KEYS)
    seconds = time.perf_counter() - t0
    # as RoomScenes.__getitem__ and then the pipeline's load_views
    r = dict(rgb=v["rgb"].permute(0, 3, 1, 2).float() / 255, depth=v["depth"].float(), K=v["K"].float(), viewmats=v["viewmats"].float())
    return item["scene_id"], dict(rgb=r["rgb"].permute(0, 2, 3, 1), depth=r["depth"], K=r["K"], viewmat=r["viewmats"]), seconds


class TimedLog(list):
    "A `finetune` log that also records the wall and CPU clocks when each step's record arrives (after `opt.step()`)."
    def __init__(self, sync):
        super().__init__(); self.sync, self.clock = sync, []

    def append(self, rec):
        self.sync(); self.clock.append((time.perf_counter(), time.process_time()))
        super().append(rec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's choice)")
    ap.add_argument("--iterations", type=int, default=SMALL_LIFT["iterations"], help="Stage 1 optimisation steps")
    ap.add_argument("--views", type=int, default=20, help="views of the room")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--room", type=int, default=0, help="which train room of the `small` plan")
    ap.add_argument("--ft-steps", type=int, default=20, help="Stage 2 steps timed")
    ap.add_argument("--ft-warmup", type=int, default=2, help="Stage 2 steps before timing")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args(argv)
    if a.iterations < 1 or a.views < 1 or a.ft_steps < 1 or a.ft_warmup < 0:
        ap.error("--iterations, --views and --ft-steps must be >= 1, --ft-warmup >= 0")
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    try: load = os.getloadavg()[0]
    except OSError: load = float("nan")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()} (default {DEFAULT_THREADS}), cpus={os.cpu_count()}, "
          f"load avg(1 min)={load:.1f}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)}), gsplat {'yes' if _gsplat_available() else 'no'}" if dev.type == "cuda" else ""))

    teacher = load_teacher("small").to(dev)
    lcfg = LiftConfig.from_preset("small", **{**SMALL_LIFT, "iterations": a.iterations})
    print(f"teacher: shipped small ({teacher.config['name']}, {teacher.embed_dim}-d, patch {teacher.patch_size})")
    print(lcfg)
    sid, views, build_s = room_views(a.views, a.width, a.height, a.room)
    views = {k: t.to(dev) for k, t in views.items()}
    V, H, W, _ = views["rgb"].shape
    print(f"room {sid}: {V} views of {W}x{H}, built in {build_s:.1f} s (setup, not timed below)")

    # Stage 1
    torch.manual_seed(lcfg.seed * 1_000_003 + a.room)               # as the pipeline's lift_views
    sync(); w0, c0 = time.perf_counter(), time.process_time()
    gs, hist = lift_scene(views, teacher, lcfg, device=dev)
    sync(); wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    steps_s = sum(hist["seconds"])
    tail = max(1, len(hist["psnr"]) // 10)
    mean_tail = lambda k: sum(hist[k][-tail:]) / tail
    print(f"Stage 1: {wall:.2f} s per scene wall ({cpu:.2f} CPU-s), {lcfg.iterations} iterations: "
          f"{lcfg.iterations / wall:.2f} it/s overall, {lcfg.iterations / steps_s:.2f} it/s in the steps "
          f"({steps_s:.2f} s; teacher features + init {wall - steps_s:.2f} s)")
    print(f"Stage 1: {hist['n_gaussians'][0]} -> {len(gs)} Gaussians; final PSNR {hist['psnr'][-1]:.2f} dB (last step), "
          f"{mean_tail('psnr'):.2f} dB (mean of the last {tail} steps, as the pipeline reports), feature L1 {mean_tail('feat'):.4f}")

    # Stage 2
    fcfg = FinetuneConfig.from_preset("small")
    B, n = fcfg.batch_size, V
    spe = math.ceil(n / B)
    total = a.ft_warmup + a.ft_steps
    fcfg = dataclasses.replace(fcfg, epochs=math.ceil(total / spe))   # enough epochs for warm-up + timed steps
    print(fcfg)
    student = trainable_copy(teacher)
    log = TimedLog(sync)
    sync(); w0, c0 = time.perf_counter(), time.process_time()
    finetune(student, [(gs, views)], fcfg, stop_after=total, log=log)
    if len(log.clock) != total: raise RuntimeError(f"finetune ran {len(log.clock)} steps, expected {total}")
    start = log.clock[a.ft_warmup - 1] if a.ft_warmup else (w0, c0)
    wall, cpu = log.clock[-1][0] - start[0], log.clock[-1][1] - start[1]
    images = sum(min(B, n - (s % spe) * B) for s in range(a.ft_warmup, total))   # the last batch of an epoch may be short
    print(f"Stage 2: {a.ft_steps} steps after {a.ft_warmup} warm-up, {images} images (batch {B}, {n} views): "
          f"{images / wall:.2f} images/s wall, {images / cpu:.2f} images per CPU-s, {wall / a.ft_steps:.3f} s/step; "
          f"loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f}")


if __name__ == "__main__":
    main()
