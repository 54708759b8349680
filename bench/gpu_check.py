"""The GPU check of condense-nb: one command, under 10 minutes on one H100/H200, one JSON.

What it runs, each as its own subprocess with a time limit (a failing or slow step is recorded, the others still run):

1. `environment` — torch, CUDA, the device and gsplat, as seen from Python.
2. `gsplat_parity` — `tests/test_gaussians.py::test_gsplat_parity`: our pure-PyTorch rasterizer against gsplat's CUDA
   kernels on the same scene (images, alphas and the gradients of every Gaussian parameter).
3. `rasterizer` — `bench/bench_rasterizer.py --no-cpu`: forward + backward at 64 channels, 128², 10k and 50k Gaussians,
   PyTorch path vs gsplat on the GPU, with their ratio.
4. `raymarch` — `bench/bench_raymarch.py --device cuda`: rays/s of our ray marcher vs nerfacc's dense path.
5. `teacher` — `bench/bench_teacher.py --device cuda --presets small,full --precisions bf16 --peak-tflops P`: teacher
   step time, images/s and model-FLOPs utilisation at the `full` shapes in bf16 (P: the card's dense bf16 peak,
   989 TFLOP/s for an H100 SXM; pass `--peak-tflops` for another card).
6. `fit3d` — `bench/bench_fit3d.py --device cuda`: FiT3D Stage 1 seconds per room and Stage 2 images/s.
7. `point_mae` — `bench/bench_mae.py --device cuda --presets small full`: I2P-MAE pre-training samples/s.
8. `teacher_ddp` — `tests/test_teacher_ddp.py` (gloo, 2 processes): data-parallel teacher = one process.

    bash bench/gpu_check.sh                         # writes gpu_check.json in the current folder
    python bench/gpu_check.py --out check.json --peak-tflops 989
    python bench/gpu_check.py --device cpu --quick  # the same steps at toy sizes on CPU (what the test suite runs)

The JSON holds, per step: the command, exit code, seconds and the last lines of its output (the benchmarks print
their figures as text; read them there), plus `skipped` with the reason where a step cannot run (no CUDA, no gsplat).
A `full` step of every pipeline stage is `condense-nb reproduce --preset full --dry-run` (CPU, about 90 s; notebook
`50_dryrun`), not a step of this check: it measures shapes, memory and FLOPs, which do not need the GPU.
"""
import argparse, datetime, json, os, platform, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_PROBE = ("import json, torch, importlib.util as u; "
             "d = dict(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(), "
             "gsplat=u.find_spec('gsplat') is not None, nerfacc=u.find_spec('nerfacc') is not None); "
             "d.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)), "
             "memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)) if d['cuda_available'] else None; "
             "print(json.dumps(d))")


def steps(device: str, quick: bool, peak: float) -> list:
    "(name, argv, reason to skip or None) of every check, at full or toy (`quick`) sizes."
    py, cuda = sys.executable, device == "cuda"
    q = lambda full, small: small if quick else full
    return [
        ("environment", [py, "-c", ENV_PROBE], None),
        ("gsplat_parity", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gaussians.py", "-k", "gsplat_parity"],
         None if cuda else "needs CUDA (and gsplat)"),
        ("rasterizer", [py, "bench/bench_rasterizer.py"] + q(["--no-cpu"], ["--n", "500", "--size", "32", "--reps", "1", "--threads", "1"]),
         None),
        ("raymarch", [py, "bench/bench_raymarch.py", "--device", device] + q([], ["--rays", "512", "--res", "16", "--samples", "16"]), None),
        ("teacher", [py, "bench/bench_teacher.py", "--device", device]
         + q(["--presets", "small,full", "--precisions", "bf16", "--peak-tflops", str(peak)], ["--presets", "tiny", "--precisions", "fp32"]),
         None),
        ("fit3d", [py, "bench/bench_fit3d.py", "--device", device]
         + q([], ["--iterations", "3", "--views", "3", "--width", "32", "--height", "24", "--ft-steps", "1", "--ft-warmup", "1"]), None),
        ("point_mae", [py, "bench/bench_mae.py", "--device", device, "--threads", "1"]
         + q(["--presets", "small", "full"], ["--presets", "tiny", "--steps", "1", "--warmup", "1", "--feat-dim", "0"]), None),
        ("teacher_ddp", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_teacher_ddp.py"],
         "skipped in --quick (the test suite runs it)" if quick else None),
    ]


def run_step(name: str, argv: list, timeout: float) -> dict:
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = r.returncode, (r.stdout + r.stderr)
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", f"{e.stdout or ''}{e.stderr or ''}\n(stopped after {timeout:.0f} s)"
        out = out if isinstance(out, str) else out.decode(errors="replace")
    lines = [l for l in out.splitlines() if l.strip()]
    rec = dict(name=name, command=" ".join(Path(a).name if a == sys.executable else a for a in argv), rc=rc,
               seconds=round(time.time() - t0, 1), output_tail=lines[-40:])
    if name == "environment" and rc == 0: rec["info"] = json.loads(lines[-1])
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON to write (default: gpu_check.json)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="toy sizes (seconds on a CPU): checks that every step runs")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak TFLOP/s, for MFU (default: H100 SXM)")
    ap.add_argument("--step-timeout", type=float, default=150.0, help="seconds allowed per step (default: 150)")
    args = ap.parse_args(argv)
    report = dict(started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), host=platform.node(),
                  device=args.device, quick=args.quick, peak_tflops=args.peak_tflops, steps=[])
    failed = 0
    for name, cmd, skip in steps(args.device, args.quick, args.peak_tflops):
        rec = dict(name=name, skipped=skip) if skip else run_step(name, cmd, args.step_timeout)
        report["steps"].append(rec)
        failed += rec.get("rc", 0) != 0
        status = f"skipped ({skip})" if skip else f"rc={rec['rc']} in {rec['seconds']:.0f} s"
        print(f"{name:14s} {status}", flush=True)
        tmp = Path(args.out).with_suffix(".json.tmp"); tmp.write_text(json.dumps(report, indent=1)); tmp.replace(args.out)   # after each step
    print(f"{len(report['steps'])} steps, {failed} failed; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
