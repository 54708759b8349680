"""Score one more teacher (e.g. a second training seed) on the *test* rooms exactly as the probe stage scores its teacher
(`condense_nb.probe_stage.run`: the same views, whitening, linear heads, learning rates, epochs chosen on val, probe seeds),
and compare it with the rows of a finished probe stage's `metrics.json`, paired over the same test rooms.

    python bench/teacher_seed_test.py --data /work/data --probes runs/small/probes/metrics.json --teacher NAME=PATH
        [--also random --also small_v1 ...] [--out F]

For reproduction checks only (does a second seed go the same way?): nothing here chooses anything. The random-init ViT row
is not recomputed: the stage's seeded random network and probes are deterministic, so its stored per-room scores are the
baseline. Prints the probe table (mean ± std over probe seeds), the paired per-room differences with 95 % bootstrap CIs
(`condense_nb.claims.claim_row`), per-class IoU and the probe-free diagnostics (room identification also from layout and
from object tokens); `--also` adds the diagnostics (only) of the stage's random-init ViT or of shipped teachers by name.
Writes everything as JSON with --out."""
import argparse, json, sys, time
from pathlib import Path
import numpy as np
import torch

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="datasets folder holding the probe stage's preset")
    ap.add_argument("--probes", required=True, help="a finished probe stage's metrics.json")
    ap.add_argument("--teacher", required=True, help="NAME=PATH of a teacher.safetensors")
    ap.add_argument("--also", action="append", default=[], help="'random' or a shipped teacher's name (small_v1): its test diagnostics too")
    ap.add_argument("--threads", type=int, default=1); ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from condense_nb.core import load_json, save_json
    from condense_nb.encoders import load_encoder, load_teacher
    from condense_nb.datasets import build_preset
    from condense_nb.features import extract_features
    from condense_nb.probes import run_probes, unit_scores, format_table
    from condense_nb.diagnostics import feature_diagnostics
    from condense_nb.claims import claim_row, claims_table
    from condense_nb.scenes import CLASSES
    from condense_nb.probe_stage import ProbeStageConfig, stage_splits, seed_class_iou, extractors, LAYOUT
    probes = Path(a.probes)
    if not probes.is_file(): sys.exit(f"--probes {probes}: file not found")
    m = load_json(probes)
    if "random-init ViT" not in m.get("probes", {}): sys.exit(f"--probes {probes}: no 'random-init ViT' row; expected a probe stage's metrics.json")
    name, path = a.teacher.split("=", 1) if "=" in a.teacher else ("teacher", a.teacher)
    enc = load_encoder(Path(path))
    cfg = ProbeStageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in m["config"].items()})
    seeds, probe_kw = list(cfg.seeds), dict(epochs=cfg.epochs, lrs=cfg.lrs)
    root = build_preset(m["preset"], root=a.data, progress=False)
    splits, test_rooms = stage_splits(root, cfg)
    t0 = time.time()
    feats = {s: extract_features(enc, splits[s][0]) for s in splits}
    res = run_probes(None, splits, len(CLASSES), seeds=seeds, features=feats, seg_kwargs=probe_kw, depth_kwargs=probe_kw, units=test_rooms)
    seconds = time.time() - t0
    rows = {n: r for n, r in m["probes"].items() if n != "teacher"}
    rows = {**rows, "teacher (of --probes)": m["probes"]["teacher"], name: res}
    print(format_table({n: {k: v for k, v in r.items() if k in ("seg", "depth")} for n, r in rows.items()}))
    base = m["probes"]["random-init ViT"]
    if unit_scores(base, "seg", "mIoU")[0] != unit_scores(res, "seg", "mIoU")[0]: sys.exit("test rooms differ from --probes's; same data?")
    common = dict(stage="probes", paper_figure="teacher seed check", unit="room", seeds=seeds)
    claims = [claim_row(f"{name} holds more semantics than a random network", "test mIoU, mean over rooms", name, "random-init ViT",
                        unit_scores(res, "seg", "mIoU")[1], unit_scores(base, "seg", "mIoU")[1], scale=100, **common),
              claim_row(f"{name} holds more depth than a random network", "test depth RMSE (m)", name, "random-init ViT",
                        unit_scores(res, "depth", "rmse")[1], unit_scores(base, "depth", "rmse")[1], direction=-1, **common)]
    print(); print(claims_table(claims))
    iou = seed_class_iou(res)
    per_class = {c: None if np.isnan(iou[:, k]).all() else float(np.nanmean(iou[:, k])) for k, c in enumerate(CLASSES)}
    print("\nIoU per class (%):", ", ".join(f"{c} {100 * v:.1f}" for c, v in per_class.items() if v is not None))
    diag = lambda f: feature_diagnostics(f, splits["test"][1], test_rooms, len(CLASSES), patch=enc.patch_size, layout_classes=LAYOUT)
    diags = {name: diag(feats["test"])}
    for extra in a.also:
        e = extractors(enc)["random-init ViT"] if extra == "random" else load_teacher(extra)
        diags["random-init ViT" if extra == "random" else f"shipped {extra}"] = diag(extract_features(e, splits["test"][0]))
    print(f"\nprobe-free diagnostics of the test views ({seconds:.0f} s of probes):")
    for n, d in diags.items():
        print(f"{n:>24}: between-image variance {100 * d['variance']['between']:.1f} %, room id {100 * d['rooms']['top1']:.1f} % "
              f"(layout tokens {100 * d['rooms_by_tokens']['layout']['top1']:.1f}, object tokens {100 * d['rooms_by_tokens']['objects']['top1']:.1f}), "
              f"purity {100 * d['purity']['purity']:.1f} %, balanced {100 * d['purity']['balanced']:.1f} %")
    if a.out:
        save_json(a.out, dict(teacher=str(path), probes=str(probes), seconds=round(seconds, 1),
                              result={k: v for k, v in res.items() if k not in ("probes", "whitening")}, claims=claims,
                              iou_per_class=per_class, diagnostics=diags))

if __name__ == "__main__": sys.exit(main())
