"""bench/gpu_check.py at toy sizes on CPU: every step of the GPU check runs and lands in its JSON (the real check needs a
GPU; this guards the script itself against rot between the sessions that have one)."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    names = [s["name"] for s in rep["steps"]]
    assert names == ["environment", "gsplat_parity", "rasterizer", "raymarch", "teacher", "fit3d", "point_mae", "teacher_ddp"]
    ran = [s for s in rep["steps"] if not s.get("skipped")]
    assert all(s["rc"] == 0 and s["output_tail"] for s in ran) and len(ran) >= 6
    assert rep["steps"][0]["info"]["torch"] and rep["steps"][1]["skipped"] == "needs CUDA (and gsplat)"
    assert any("images/s" in line for line in rep["steps"][4]["output_tail"])    # the teacher's throughput line
