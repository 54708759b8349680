"Print the ConDense v3 fine-tunings cached so far: test voxel mIoU per init and budget, and pre-trained − scratch paired over the test rooms."
import json, sys
from pathlib import Path
import numpy as np
from condense_nb.claims import paired_bootstrap
seg = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent/"seg")
runs = {}
for f in sorted(seg.glob("*.json")):
    d = json.loads(f.read_text()); frozen = f.stem.endswith("_frozen")
    key = (d["init"], round(d["frac"] * 100), frozen)
    runs.setdefault(key, []).append(d)
print("| init | labels | frozen | seeds | test mIoU % (mean ± std) | best steps |\n|---|---|---|---|---|---|")
for (init, pct, frozen), rs in sorted(runs.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
    m = 100 * np.array([r["test"]["mIoU"] for r in rs])
    print(f"| {init} | {pct} % | {'yes' if frozen else 'no'} | {len(rs)} | {m.mean():.1f} ± {m.std():.1f} | {[r['best_step'] for r in rs]} |")
print("\n| comparison | per-room mIoU difference [95 % CI] | rooms × seeds |\n|---|---|---|")
for (a, b) in [(("pretrained", p, fz), ("scratch", p, fz)) for p, fz in ((1, False), (10, False), (100, False), (1, True))] + \
              [(("oracle", 1, False), ("scratch", 1, False)), (("oracle", 1, True), ("scratch", 1, True))]:
    if a in runs and b in runs and len(runs[a]) == len(runs[b]):
        A = 100 * np.array([r["test"]["per_room_mIoU"] for r in runs[a]]); B = 100 * np.array([r["test"]["per_room_mIoU"] for r in runs[b]])
        r = paired_bootstrap(A, B)
        print(f"| {a[0]} vs {b[0]}, {a[1]} %{' frozen' if a[2] else ''} | {r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {A.shape[1]} × {A.shape[0]} |")

# against an earlier finished stage's pre-trained backbone (e.g. v2's results/small/condense/metrics.json): python summary.py SEG METRICS
if len(sys.argv) > 2:
    old = json.loads(Path(sys.argv[2]).read_text())
    print(f"\n| pre-trained backbone, this run vs {sys.argv[2]} | per-room mIoU difference [95 % CI] |\n|---|---|")
    for (init, pct, frozen), rs in sorted(runs.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if init != "pretrained": continue
        B = old["seg3d_frozen"]["pretrained"] if frozen else old["seg3d"][f"pretrained@{pct}%"]
        r = paired_bootstrap(100 * np.array([x["test"]["per_room_mIoU"] for x in rs]), 100 * np.array(B["per_room_mIoU"]))
        print(f"| {pct} %{' frozen' if frozen else ''} | {r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] |")
