"""Draw a teacher run's snapshots as the val rooms scored them (`selection.json` of `condense_nb.probe_stage.choose_snapshot`):
val mIoU, cross-room patch purity and room identification against the training step, one line per run, with reference rows
from `bench/teacher_val.py` outputs (e.g. the random-init ViT and the shipped teacher) as horizontal lines.

    python bench/teacher_snapshots.py --run NAME=SELECTION_JSON [--run ...] [--ref FILE:KEY=LABEL ...] --out FIGURE.png

Prints the table it draws."""
import argparse, json, sys
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", default=[], help="NAME=path/to/selection.json (repeatable)")
    ap.add_argument("--ref", action="append", default=[], help="FILE:KEY=LABEL, a row of a bench/teacher_val.py JSON (repeatable)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from matplotlib.figure import Figure
    panels = [("val mIoU (%)", lambda r: r["val_mIoU"]), ("balanced cross-room patch purity (%)", lambda r: r["purity"]["balanced"]),
              ("room id. from mean tokens (%, lower: less room code)", lambda r: r["rooms"]["top1"])]
    fig = Figure(figsize=(13, 3.6), layout="constrained"); axs = fig.subplots(1, len(panels))
    for spec in a.run:
        name, path = spec.split("=", 1)
        sel = json.loads(Path(path).read_text())
        steps = sorted(int(k) for k in sel["scores"])
        rows = {s: dict(val_mIoU=sel["scores"][str(s)], **sel["diagnostics"][str(s)]) for s in steps}
        for ax, (title, get) in zip(axs, panels): ax.plot(steps, [100 * get(rows[s]) for s in steps], "o-", label=name)
        for s in steps: print(f"{name:>10} step {s:5d}: " + "  ".join(f"{t.split(' (')[0]} {100 * g(rows[s]):.1f}" for t, g in panels))
    for k, spec in enumerate(a.ref):
        where, label = spec.rsplit("=", 1); file, key = where.rsplit(":", 1)
        row = json.loads(Path(file).read_text())[key]
        for ax, (title, get) in zip(axs, panels):
            try: ax.axhline(100 * get(row), ls="--", c=f"C{k + 3}", label=label)
            except KeyError: pass                                    # a reference without that diagnostic
        print(f"{label}: " + "  ".join(f"{t.split(' (')[0]} {100 * g(row):.1f}" for t, g in panels if _has(g, row)))
    for ax, (title, _) in zip(axs, panels): ax.set_xlabel("training step"); ax.set_title(title, fontsize=10); ax.set_xlim(left=0)
    axs[0].legend(fontsize=7)
    fig.savefig(a.out, dpi=110); print("wrote", a.out)

def _has(get, row):
    try: get(row); return True
    except KeyError: return False

if __name__ == "__main__": sys.exit(main())
