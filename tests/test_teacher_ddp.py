"""Data-parallel teacher training under `torchrun` (gloo, 2 CPU processes) against one process with the same global batch:
the same weights within float tolerance, for the `tiny` recipe (DINO + iBOT + dense Sinkhorn targets) and for the
`small` one (DINO + dense, image-centred targets), including a torchrun run interrupted and resumed. (A batch that does not split over the processes is refused by
`rank_block`, tested in notebook 12.)"""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch
import safetensors.torch as st
from condense_nb.core import seed_everything
from condense_nb.teacher import from_preset, train_teacher, toy_images, DinoState

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = '''
import json, pathlib, sys, torch, torch.distributed as dist
import condense_nb.teacher as T
dist.init_process_group("gloo")
torch.set_num_threads(1)
over, out, stop = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen, vit_tokens = [], T.vit_tokens
T.vit_tokens = lambda net, x, mask=None: (seen.append(len(x)), vit_tokens(net, x, mask))[1]   # the crops this process encodes
T.train_teacher(T.toy_images(32, 32, seed=0), T.from_preset("tiny", **over), out, progress=False, stop_at=stop)
pathlib.Path(out, f"seen_{dist.get_rank()}.json").write_text(json.dumps(seen))
dist.destroy_process_group()
'''
RECIPES = {"ibot+sinkhorn": dict(steps=4, ckpt_every=2),
           "dense+image": dict(steps=4, ckpt_every=2, ibot_weight=0.0, patch_targets="image", n_local=1)}
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


def torchrun(script: Path, over: dict, out: Path, stop: int):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(script), json.dumps(over), str(out), str(stop)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def state_of(out: Path) -> dict:
    latest = json.loads((out / "latest.json").read_text())
    weights = {k: v for k, v in st.load_file(out / latest["checkpoint"]).items() if not k.startswith("optim.")}
    return weights, latest["step"], json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("name", list(RECIPES))
def test_two_processes_equal_one(name, tmp_path):
    over = RECIPES[name]
    script = tmp_path / "train.py"; script.write_text(SCRIPT)
    if name == "ibot+sinkhorn": torchrun(script, over, tmp_path / "ddp", stop=2)   # interrupted after step 2, then resumed:
    torchrun(script, over, tmp_path / "ddp", stop=over["steps"])
    torch.set_num_threads(1)
    train_teacher(toy_images(32, 32, seed=0), from_preset("tiny", **over), tmp_path / "one", progress=False)
    ddp, step_d, hist_d = state_of(tmp_path / "ddp")
    one, step_1, hist_1 = state_of(tmp_path / "one")
    assert step_d == step_1 == over["steps"] and set(ddp) == set(one)
    worst = {}
    for k in one:                                                     # student, EMA teacher and both centres
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")
        worst[k] = (ddp[k] - one[k]).abs().max().item()
    print(f"{name}: largest difference two processes − one {max(worst.values()):.2e} ({max(worst, key=worst.get)})")
    seed_everything(0); fresh = DinoState(from_preset("tiny", **over)).state_dict()
    assert all(not torch.equal(one[k], fresh[k]) for k in one if k.startswith("student.encoder"))   # every weight moved
    for a, b in zip(hist_d, hist_1, strict=True):                     # the logged losses are the global ones
        for key in ("loss", "dino", "ibot", "dense"): assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(b[key])), (a["step"], key)
    assert (tmp_path / "ddp" / "teacher.safetensors").exists()        # rank 0 wrote the teacher
    cfg = from_preset("tiny", **over)                                 # each process encoded only its half of every view:
    for r in (0, 1):                                                  # teacher and student global crops, then the local ones
        seen = json.loads((tmp_path / "ddp" / f"seen_{r}.json").read_text())
        assert seen[:3] == [cfg.batch_size, cfg.batch_size, cfg.n_local * cfg.batch_size // 2], seen[:3]

