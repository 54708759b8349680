"""Pinned `tiny` metrics: every number a tiny pipeline run writes to its metrics.json, compared with the values recorded in
`tests/tiny_metrics.json` by an earlier run of the same test (never typed by hand).

A change of behaviour — a preset, a loss, a data path, an off-by-one in a split — moves these numbers; a refactoring must
not. The tests run torch single-threaded (conftest.py), so on one torch version the numbers repeat to the last bit and
are compared with a tolerance of 1e-6 (relative). Under another torch or NumPy version, where kernels may round differently,
the comparison is loose (5e-2 relative, 5e-3 absolute) and catches only real changes.

To re-record after an intended change of behaviour, run the pinning tests with `CONDENSE_PIN_WRITE=1`:

    CONDENSE_PIN_WRITE=1 python -m pytest tests/test_reproduce_tiny.py tests/test_pipeline_fit3d.py \\
        tests/test_pipeline_i2pmae.py tests/test_pipeline_condense.py -k pinned

and commit the new `tests/tiny_metrics.json` with the change that explains it.
"""
import json, math, os, re
from pathlib import Path

PIN_FILE = Path(__file__).with_name("tiny_metrics.json")
# numbers that measure the machine, not the method: wall times, rates, memory, dates
SKIP = re.compile(r"(^|_)(s|seconds?|secs?|time|times|timings?|elapsed|wall|duration|minutes|hours|per_s|rate|throughput|bytes|mb|peak|date|at)($|_)")


def numeric_leaves(obj, prefix: str = "") -> dict:
    "Every int/float leaf of a JSON tree as {'a/b/0/c': value}, leaving out keys that measure time or memory."
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if SKIP.search(str(k).lower()): continue
            out.update(numeric_leaves(v, f"{prefix}{k}/"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj): out.update(numeric_leaves(v, f"{prefix}{i}/"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip("/")] = float(obj)
    return out


def environment() -> dict:
    import numpy, torch
    return {"torch": torch.__version__.split("+")[0], "numpy": numpy.__version__}


def check_pinned(name: str, metrics: dict) -> None:
    "Assert that the numbers of `metrics` equal those pinned under `name` (or record them, with CONDENSE_PIN_WRITE=1)."
    got = numeric_leaves(metrics)
    assert got, f"{name}: no numbers to pin"
    pins = json.loads(PIN_FILE.read_text()) if PIN_FILE.exists() else {"environment": environment(), "runs": {}}
    if os.environ.get("CONDENSE_PIN_WRITE") == "1":
        pins["runs"][name] = got
        pins["environment"] = environment()
        PIN_FILE.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
        return
    assert name in pins["runs"], f"{name}: no pinned metrics in {PIN_FILE.name}; record them with CONDENSE_PIN_WRITE=1"
    want = pins["runs"][name]
    same_env = pins["environment"] == environment()
    rel, abs_ = (1e-6, 1e-9) if same_env else (5e-2, 5e-3)
    assert set(got) == set(want), (f"{name}: the metrics' keys changed: new {sorted(set(got) - set(want))[:5]}, "
                                   f"gone {sorted(set(want) - set(got))[:5]}")
    moved = {k: (want[k], got[k]) for k in want
             if not (math.isnan(want[k]) and math.isnan(got[k])) and not math.isclose(got[k], want[k], rel_tol=rel, abs_tol=abs_)}
    assert not moved, (f"{name}: {len(moved)} of {len(want)} pinned numbers moved (pinned, now), e.g. "
                       f"{dict(list(moved.items())[:6])}; environment {'as pinned' if same_env else 'differs from the pin'}")
