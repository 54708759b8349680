"""Room identification from mean tokens when rooms share their floor and wall materials (issue 12's diagnostic, harder).

`diagnostics.room_identification` finds, for every view, the nearest other view by mean token and counts a hit when
that view shows the same room. On the labelled test rooms every extractor scores high
(random-init ViT 84.9 %, teacher v3 95.0 %; README), and the question left open there is whether that is the rooms'
palette. ConDense's query sets (`condense-nb pool --preset small --queries`) answer it: the same new rooms and cameras
rendered twice, each room in its own materials, then every room with one floor and one wall material. In the second
condition the palette of the largest surfaces is gone; what tells rooms apart is their layout, objects and lighting.

    python bench/room_id_shared_materials.py --root /work/data [--preset small] [--rooms 120] [--threads 1] [--out F]

Prints one row per extractor (RGB pixels, the probe stage's seeded random-init ViT, the shipped teachers v1, v2, v3):
top-1 in each condition, chance, and the drop. Nothing here is chosen: a measurement only.
"""
import argparse, json, sys, time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="datasets folder holding queries_PRESET/ and queries_PRESET_shared/ (built if missing)")
    ap.add_argument("--preset", default="small", help="data preset of the query sets (default: small)")
    ap.add_argument("--rooms", type=int, default=None, help="the first N query rooms (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    a = ap.parse_args(argv)
    import torch
    from condense_nb.core import save_json, torch_threads
    from condense_nb.pool import build_pool, pool_rooms, query_set
    from condense_nb.encoders import load_teacher
    from condense_nb.features import extract_features
    from condense_nb.diagnostics import room_identification
    from condense_nb.probe_stage import extractors

    v3 = load_teacher("small")
    named = {k: v for k, v in extractors(v3).items() if k != "teacher"}          # RGB pixels, the seeded random-init ViT
    named.update({"teacher v1": load_teacher("small_v1"), "teacher v2": load_teacher("small_v2"), "teacher v3 (shipped)": v3})
    rows, t0 = {}, time.time()
    with torch_threads(a.threads):
        views = {}
        for cond, shared in (("own materials", False), ("shared floor and wall", True)):
            cfg = query_set(a.preset, shared)
            n = a.rooms or cfg.rooms
            rooms = pool_rooms(build_pool(cfg, a.root, progress=True, max_rooms=n), n)
            views[cond] = (torch.cat([r["rgb"] for r in rooms]), torch.cat([torch.full((len(r["rgb"]),), i) for i, r in enumerate(rooms)]))
        for name, fn in named.items():
            rows[name] = {cond: room_identification(extract_features(fn, rgb), ids) for cond, (rgb, ids) in views.items()}
            own, shared = (rows[name][c]["top1"] for c in views)
            print(f"{name:>22}: own materials {100 * own:5.1f} %, shared floor and wall {100 * shared:5.1f} %, drop {100 * (own - shared):+5.1f}",
                  flush=True)
    first = next(iter(rows.values()))["own materials"]
    n_rooms = int(views["own materials"][1].max()) + 1
    print(f"chance {100 * first['chance']:.1f} % ({first['views']} views of {n_rooms} rooms per condition); {time.time() - t0:.0f} s")
    if a.out: save_json(a.out, dict(preset=a.preset, rooms=n_rooms, views=first["views"], chance=first["chance"],
                                    seconds=round(time.time() - t0, 1), room_identification=rows))


if __name__ == "__main__": sys.exit(main())
