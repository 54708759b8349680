"""Pinned `tiny` metrics: every number a tiny pipeline run writes to its metrics.json, compared with the values recorded in
`tests/tiny_metrics.json` by an earlier run of the same test (never typed by hand).

A change of behaviour — a preset, a loss, a data path, an off-by-one in a split — moves these numbers; a refactoring must
not. The tests run torch single-threaded (conftest.py), so on one torch version the numbers repeat to the last bit and
are compared with a tolerance of 1e-6 (relative). The pins are kept per environment: the torch and NumPy versions, the CPU model and
the CPU kernels torch dispatches to. Another environment rounds differently (AVX2 vs AVX512; `precision="auto"` also
trains the teacher in bfloat16 on AVX512), and a tiny run turns those last bits into other discrete outcomes (an SVM
accuracy over 24 shapes moves by 1/24, a class appears in a split), so no tolerance could compare across environments:
an environment without pins skips these tests, saying so, until its pins are recorded.

To record the pins of a new environment, run the pinning tests with `CONDENSE_PIN_WRITE=1`; after an intended change of
behaviour, with `CONDENSE_PIN_WRITE=replace`, which also drops the other environments' pins of the runs it records (they
no longer describe the code):

    CONDENSE_PIN_WRITE=replace python -m pytest tests/test_reproduce_tiny.py tests/test_pipeline_fit3d.py \\
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


def cpu_model() -> str:
    "The CPU's model name (Linux /proc/cpuinfo; elsewhere `platform.processor()`): vendors' math libraries take other paths."
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or "unknown"


def environment() -> dict:
    "What decides the last bits: the torch and NumPy versions, the CPU kernels torch dispatches to (AVX2, AVX512, ...), the CPU."
    import numpy, torch
    return {"torch": torch.__version__.split("+")[0], "numpy": numpy.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_model()}


def _env_key(env: dict) -> str: return " ".join(f"{k}={env[k]}" for k in sorted(env))


def read_pins() -> dict:
    "The pin file as {environment key: {'environment': ..., 'runs': {name: {leaf: value}}}}."
    if not PIN_FILE.exists(): return {}
    data = json.loads(PIN_FILE.read_text())
    return data.get("by_environment", {})                   # (files from before the CPU was recorded name no usable environment)


def check_pinned(name: str, metrics: dict) -> None:
    """Assert that the numbers of `metrics` equal those pinned under `name` for this environment (or record them, with
    CONDENSE_PIN_WRITE=1). An environment with no pins skips, naming the environments that have them."""
    import pytest
    got = numeric_leaves(metrics)
    assert got, f"{name}: no numbers to pin"
    env = environment(); key = _env_key(env)
    pins = read_pins()
    mode = os.environ.get("CONDENSE_PIN_WRITE", "")
    if mode in ("1", "replace"):
        if mode == "replace":                                # a change of behaviour: the other environments' pins of `name` are stale
            for e in pins.values(): e["runs"].pop(name, None)
        pins.setdefault(key, {"environment": env, "runs": {}})["runs"][name] = got
        pins = {k: e for k, e in pins.items() if e["runs"]}
        PIN_FILE.write_text(json.dumps({"by_environment": pins}, indent=1, sort_keys=True) + "\n")
        return
    want = pins.get(key, {}).get("runs", {}).get(name)
    if want is None:
        pytest.skip(f"{name}: no pinned metrics for this environment ({key}) in {PIN_FILE.name} (pinned for: {sorted(pins) or 'none'}); "
                    "record them with CONDENSE_PIN_WRITE=1")
    assert set(got) == set(want), (f"{name}: the metrics' keys changed: new {sorted(set(got) - set(want))[:5]}, "
                                   f"gone {sorted(set(want) - set(got))[:5]}")
    moved = {k: (want[k], got[k]) for k in want
             if not (math.isnan(want[k]) and math.isnan(got[k])) and not math.isclose(got[k], want[k], rel_tol=1e-6, abs_tol=1e-9)}
    assert not moved, f"{name}: {len(moved)} of {len(want)} pinned numbers moved (pinned, now), e.g. {dict(list(moved.items())[:6])}; environment {key}"
