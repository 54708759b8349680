"""Issue 15, the command line's part: odd arguments, damaged and stale state, interrupted runs and concurrent runs each
get the right result or one clear line, and the runner owns the kernels it starts.

Most tests run throwaway pipeline notebooks (a second or two per kernel); `test_kill_and_resume_tiny` runs the real
`data` and `teacher` stages of the `tiny` preset three times (about a minute)."""
import json, os, random, re, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from condense_nb import cli
from condense_nb.core import FolderLock

ROOT = Path(__file__).resolve().parent.parent
kernel = [pytest.mark.kernel, pytest.mark.timeout(180)]

PARAMS = 'preset = "unset"\ndata_root = "unset"\nout_dir = "unset"'
COUNT = '''
from pathlib import Path
_c = Path(data_root)/(STAGE + ".count"); _c.parent.mkdir(parents=True, exist_ok=True)
_c.write_text(str(int(_c.read_text()) + 1 if _c.exists() else 1))
'''
SAME = '(Path(out_dir)/"result.txt").write_text("always the same bytes")'


def write_nb(path: Path, stage: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"STAGE = {stage!r}" + COUNT), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def setup(tmp: Path, stages: dict, **extra) -> dict:
    "One notebook per stage in `tmp/pipelines`; the keyword arguments of `reproduce` for them."
    (tmp/"pipelines").mkdir(exist_ok=True)
    registry = []
    for i, (stage, body) in enumerate(stages.items()):
        write_nb(tmp/"pipelines"/f"{i:02d}_{stage}.ipynb", stage, body)
        registry.append((stage, f"{i:02d}_{stage}.ipynb"))
    return dict(root=tmp/"data", runs=tmp/"runs", pipelines_dir=tmp/"pipelines", registry=registry,
                log_output=False, progress=False, **extra)


def count(tmp: Path, stage: str) -> int:
    f = tmp/"data"/f"{stage}.count"
    return int(f.read_text()) if f.exists() else 0


def as_cli(monkeypatch, kw: dict):
    "Make `cli.main` see the throwaway registry of `kw` (it has no --pipelines option)."
    monkeypatch.setattr(cli, "PIPELINES", kw["registry"])
    monkeypatch.setattr(cli, "DEPENDS", kw.get("depends") or {})
    monkeypatch.setattr(cli, "OUTPUTS", kw.get("outputs") or {})
    monkeypatch.setattr(cli, "find_pipelines_dir", lambda: kw["pipelines_dir"])
    monkeypatch.setattr(cli, "_papermill_logging", lambda: None)


def one_line_error(err: str, *needles) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles: assert n in lines[0], (n, lines[0])
    return lines[0]


def owned(prefix: str) -> list[int]:
    "PIDs of live processes whose CONDENSE_NB_OWNER token starts with `prefix` (the runner's PID)."
    want = f"{cli._OWNER}={prefix}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try: env = Path(f"/proc/{d}/environ").read_bytes()
            except OSError: continue
            if any(v.startswith(want) for v in env.split(b"\0")): out.append(int(d))
    return out


def wait_gone(prefix: str, timeout: float = 15.0) -> list[int]:
    end = time.monotonic() + timeout
    while owned(prefix) and time.monotonic() < end: time.sleep(0.2)
    return owned(prefix)


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds processes through Linux /proc")


# ---------------------------------------------------------------- arguments that lie, raw tracebacks

@pytest.mark.parametrize("value", ["-1", "0", str((os.cpu_count() or 1) + 1), "100000", "two"])
def test_threads_outside_1_to_cpu_count(value, capsys):
    for cmd in (["reproduce", "--preset", "tiny"], ["data", "--preset", "tiny"]):
        assert cli.main(cmd + ["--threads", value]) == 2
        one_line_error(capsys.readouterr().err, "--threads", f"1..{os.cpu_count()}", repr(value))
    with pytest.raises(cli.UsageError, match=r"threads \(this machine has \d+ CPUs; 0: each pipeline.s own\): expected an int in \[0, \d+\], got -1"): cli.reproduce("tiny", threads=-1)


def test_every_pipeline_declares_threads():
    "`--threads` goes to every stage, so every pipeline's `parameters` cell must have it (papermill: 'unknown parameter')."
    import papermill as pm
    for stage, nb in cli.PIPELINES:
        assert "threads" in pm.inspect_notebook(str(cli.find_pipelines_dir()/nb)), stage


@pytest.mark.parametrize("arg, says", [("teacher.steps=10", "has no parameter 'steps'"), ("teacher.shipped=maybe", "expected true/false"),
                                       ("teacher.out_dir=/x", "is set by reproduce itself"), ("probes.threads=1", "stage 'probes' is not selected"),
                                       ("teacher=1", "expected STAGE.KEY=VALUE"), ("nope.x=1", "unknown stage 'nope'")])
def test_set_arguments_are_checked_before_any_kernel(tmp_path, capsys, arg, says):
    "`reproduce --set` is checked against the typed parameters cell of the stage's notebook: one line, exit code 2."
    assert cli.main(["reproduce", "--preset", "tiny", "--only", "teacher", "--root", str(tmp_path/"data"), "--runs", str(tmp_path/"runs"),
                     "--set", arg]) == 2
    one_line_error(capsys.readouterr().err, "--set", says)
    assert not (tmp_path/"runs"/"tiny"/"teacher").exists()


def test_every_pipeline_parameter_is_typed():
    "Each pipeline's parameters cell types every parameter (`preset: str = \"tiny\"`), so `--set` can check values."
    import ast
    for stage, nb in cli.PIPELINES:
        cells = json.loads((cli.find_pipelines_dir()/nb).read_text())["cells"]
        src = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
        untyped = [n.targets[0].id for n in ast.parse(src).body if isinstance(n, ast.Assign)]
        assert not untyped, (stage, untyped)
        assert set(cli.notebook_parameters(cli.find_pipelines_dir()/nb)) >= {"preset", "data_root", "out_dir", "threads"}, stage


@pytest.mark.parametrize("sub", ["", "sub"])
def test_runs_is_a_file(tmp_path, capsys, sub):
    f = tmp_path/"afile"; f.write_text("x")
    assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(f/sub if sub else f)]) == 2
    one_line_error(capsys.readouterr().err, "--runs", str(f), "is a file, not a folder")


def test_data_root_is_a_file(tmp_path, capsys):
    f = tmp_path/"afile"; f.write_text("x")
    assert cli.main(["data", "--preset", "tiny", "--root", str(f)]) == 2
    one_line_error(capsys.readouterr().err, "--root", str(f), "is a file")
    assert cli.main(["reproduce", "--preset", "tiny", "--root", str(f), "--runs", str(tmp_path/"runs"), "--only", "data"]) == 2
    one_line_error(capsys.readouterr().err, "--root", str(f), "is a file")


def _deny_writes(monkeypatch):
    def mkstemp(*a, dir=None, **k): raise PermissionError(13, "Permission denied", str(Path(dir)/".write-test-x.tmp"))
    monkeypatch.setattr(cli.tempfile, "mkstemp", mkstemp)


def test_read_only_folders(tmp_path, capsys, monkeypatch):
    "A runs or data folder the process cannot write in (simulated: this also runs as root, which may write anywhere)."
    _deny_writes(monkeypatch)
    assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(tmp_path/"runs")]) == 2
    one_line_error(capsys.readouterr().err, "--runs: cannot write in", str(tmp_path/"runs"), "Permission denied")
    for cmd in (["data"], ["pool"]):
        assert cli.main(cmd + ["--preset", "tiny", "--root", str(tmp_path/"data")]) == 2
        one_line_error(capsys.readouterr().err, "--root: cannot write in", str(tmp_path/"data"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folders_for_real(tmp_path, capsys):
    ro = tmp_path/"ro"; ro.mkdir(); ro.chmod(0o555)
    try:
        assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(ro)]) == 2
        one_line_error(capsys.readouterr().err, "--runs: cannot write in", str(ro))
        assert cli.main(["data", "--preset", "tiny", "--root", str(ro)]) == 2
        one_line_error(capsys.readouterr().err, "--root: cannot write in", str(ro))
    finally: ro.chmod(0o755)


def test_the_overwrite_remedy_exists(tmp_path, capsys, monkeypatch):
    "The dataset error for another config suggests `condense-nb data --overwrite`: that command parses and passes overwrite=True."
    from condense_nb import datasets
    (tmp_path/"tiny").mkdir(); (tmp_path/"tiny"/"config.json").write_text(json.dumps({"config": {"seed": -1}}))
    with pytest.raises(ValueError) as e: datasets.build_preset("tiny", root=tmp_path, progress=False)
    cmd = re.search(r"condense-nb (data --overwrite)", str(e.value))
    assert cmd, str(e.value)
    seen = []
    monkeypatch.setattr(datasets, "build_preset", lambda preset, root, progress, overwrite: seen.append(overwrite) or Path(root)/preset)
    assert cli.main(cmd[1].split() + ["--preset", "tiny", "--root", str(tmp_path)]) == 0 and seen == [True]


def test_failures_of_the_os_are_one_line(tmp_path, capsys, monkeypatch):
    "An OSError no check foresaw (here: the report cannot be written) is still one line naming the file, exit 1."
    monkeypatch.setattr(cli, "reproduce", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "/x/report.md")))
    assert cli.main(["reproduce", "--preset", "tiny", "--runs", str(tmp_path)]) == 1
    one_line_error(capsys.readouterr().err, "/x/report.md: Permission denied")


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_prerequisites_are_checked_before_any_kernel(tmp_path, capsys, monkeypatch):
    kw = setup(tmp_path, {"alpha": SAME, "beta": SAME, "gamma": SAME}, depends=dict(beta=("alpha",), gamma=("beta",)))
    as_cli(monkeypatch, kw)
    assert cli.main(["reproduce", "--preset", "tiny", "--root", str(kw["root"]), "--runs", str(kw["runs"]), "--only", "gamma"]) == 2
    one_line_error(capsys.readouterr().err, "stage 'beta' reads stage 'alpha', which is not up to date",
                   "no DONE.json", "run it first (--only alpha,beta,gamma)")
    assert count(tmp_path, "gamma") == 0
    assert cli.reproduce("tiny", only="alpha,beta", **kw) == 0
    assert cli.reproduce("tiny", only="gamma", **kw) == 0 and count(tmp_path, "gamma") == 1


# ---------------------------------------------------------------- stale results, stale state

@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_damaged_output_reruns_with_reason(tmp_path, capsys):
    kw = setup(tmp_path, {"alpha": '(Path(out_dir)/"weights.bin").write_bytes(b"w" * 5000)'})
    assert cli.reproduce("tiny", **kw) == 0
    (tmp_path/"runs/tiny/alpha/weights.bin").write_bytes(b"w" * 100)              # truncated by hand
    capsys.readouterr()
    assert cli.reproduce("tiny", **kw) == 0 and count(tmp_path, "alpha") == 2
    assert "out of date: its outputs changed since it finished (weights.bin is 100 bytes, was 5,000)" in capsys.readouterr().out
    assert cli.reproduce("tiny", **kw) == 0 and count(tmp_path, "alpha") == 2      # repaired: up to date again


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_library_change_reruns_only_the_stages_that_import_it(tmp_path, capsys, monkeypatch):
    pkg = tmp_path/"lib"/"condense_nb"; pkg.mkdir(parents=True)              # a package of our own, imported by the kernels
    (pkg/"__init__.py").write_text("")
    (pkg/"_a.py").write_text("from ._c import C\nA = C + 1\n")
    (pkg/"_b.py").write_text("B = 2\n")
    (pkg/"_c.py").write_text("C = 1\n")
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path/"lib")
    kw = setup(tmp_path, {"usesa": "import condense_nb._a, condense_nb\nassert condense_nb.__file__.startswith(" + repr(str(tmp_path)) + ")",
                          "usesb": "import condense_nb._b"}, depends={})
    assert cli.reproduce("tiny", **kw) == 0
    done = json.loads((tmp_path/"runs/tiny/usesa/DONE.json").read_text())
    assert set(done["library"]["files"]) == {"__init__.py", "_a.py", "_c.py"}
    with open(pkg/"_c.py", "a") as f: f.write("# edited\n")                # what _a imports changed
    capsys.readouterr()
    assert cli.reproduce("tiny", **kw) == 0
    out = capsys.readouterr().out
    assert "usesa: out of date: the library code it runs changed (_c.py)" in out
    assert (count(tmp_path, "usesa"), count(tmp_path, "usesb")) == (2, 1)   # usesb does not import _c


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_inputs_are_compared_by_content(tmp_path):
    "A forced rerun that writes the same bytes leaves the stages reading it up to date; other bytes make them rerun."
    kw = setup(tmp_path, {"alpha": SAME, "beta": SAME}, depends=dict(beta=("alpha",)))
    assert cli.reproduce("tiny", **kw) == 0
    assert cli.reproduce("tiny", only="alpha", force=True, **kw) == 0
    assert cli.reproduce("tiny", **kw) == 0 and (count(tmp_path, "alpha"), count(tmp_path, "beta")) == (2, 1)
    write_nb(tmp_path/"pipelines/00_alpha.ipynb", "alpha", '(Path(out_dir)/"result.txt").write_text("other bytes")')
    assert cli.reproduce("tiny", **kw) == 0 and (count(tmp_path, "alpha"), count(tmp_path, "beta")) == (3, 2)
    rep = (tmp_path/"runs/tiny/report.md").read_text()
    assert "| beta | [01_beta.ipynb](beta/01_beta.ipynb) | done |" in rep


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_temp_files_are_removed_and_not_counted(tmp_path, capsys):
    kw = setup(tmp_path, {"alpha": SAME}, outputs=dict(alpha=("{data_root}/{preset}",)))
    leftovers = [tmp_path/"runs/tiny/alpha/.metrics.json.abc123.tmp", tmp_path/"runs/tiny/alpha/teacher.safetensors.tmp",
                 tmp_path/"data/tiny/shapes/.clean_train.safetensors.k9.tmp"]
    for f in leftovers: f.parent.mkdir(parents=True, exist_ok=True); f.write_bytes(b"x" * 1000)
    (tmp_path/"data/tiny/kept.bin").write_bytes(b"k")
    assert cli.reproduce("tiny", **kw) == 0
    assert not any(f.exists() for f in leftovers)
    assert "removed 3 temporary file(s) left by interrupted writes" in capsys.readouterr().out
    done = json.loads((tmp_path/"runs/tiny/alpha/DONE.json").read_text())
    assert set(done["outputs"]) == {"result.txt"} and set(done["external"][str((tmp_path/"data/tiny").resolve())]) == {"kept.bin"}
    (tmp_path/"runs/tiny/alpha/.late.tmp").write_bytes(b"x")                   # a leftover does not make a stage out of date
    assert cli.reproduce("tiny", **kw) == 0 and count(tmp_path, "alpha") == 1


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_force_keeps_state_until_the_stage_rebuilds_it(tmp_path):
    kw = setup(tmp_path, {"alpha": SAME})
    assert cli.reproduce("tiny", **kw) == 0
    nb = tmp_path/"pipelines/00_alpha.ipynb"; good = nb.read_bytes()
    done = tmp_path/"runs/tiny/alpha/DONE.json"; before = done.read_bytes()
    write_nb(nb, "alpha", 'raise RuntimeError("fails before writing anything")')
    assert cli.reproduce("tiny", force=True, **kw) == 1
    assert done.read_bytes() == before                                          # --force deleted nothing
    nb.write_bytes(good)
    assert cli.reproduce("tiny", **kw) == 0 and count(tmp_path, "alpha") == 2  # the old results are still valid: skipped
    write_nb(nb, "alpha", SAME.replace("always the same bytes", "half") + '\nraise RuntimeError("died half-way")')
    assert cli.reproduce("tiny", force=True, **kw) == 1 and done.read_bytes() == before
    nb.write_bytes(good)
    assert cli.reproduce("tiny", **kw) == 0 and count(tmp_path, "alpha") == 4  # but its outputs changed: rerun


# ---------------------------------------------------------------- locks

@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_locks(tmp_path, capsys, monkeypatch):
    kw = setup(tmp_path, {"alpha": SAME, "beta": SAME}, outputs=dict(alpha=("{data_root}/{preset}",)), depends=dict(beta=("alpha",)))
    as_cli(monkeypatch, kw)
    argv = ["reproduce", "--preset", "tiny", "--root", str(kw["root"]), "--runs", str(kw["runs"])]
    lock = (tmp_path/"runs/tiny/.alpha.lock").resolve()
    with FolderLock(lock, "stage 'alpha'"):                                     # another run is in stage alpha
        assert cli.main(argv) == 1
        one_line_error(capsys.readouterr().err, str(lock), f"is locked by PID {os.getpid()}")
        assert cli.main(argv + ["--only", "beta"]) == 2                         # beta reads alpha, which is running
        one_line_error(capsys.readouterr().err, "stage 'beta' reads stage 'alpha'")
    with FolderLock(tmp_path/"data/.tiny.lock", "the dataset"):                  # `condense-nb data` is building the dataset
        assert cli.main(argv) == 1
        one_line_error(capsys.readouterr().err, str((tmp_path/"data/.tiny.lock").resolve()), "is locked by PID")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lock.write_text(json.dumps({"pid": int(dead)}))                              # left by a run killed with -9
    assert cli.main(argv) == 0
    assert f"took over the lock {lock} of PID {dead}, which is no longer running" in capsys.readouterr().out
    assert not lock.exists() and count(tmp_path, "alpha") == 1


SLOW = 'import time\ntime.sleep(float(__import__("os").environ.get("STAGE_SLEEP", "0")))\n' + SAME

# a shell's background job starts with SIGINT ignored, which the CLI honours (nohup); the runners these tests signal restore it
SIGINT_DEFAULT = "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)\n"

RUNNER = SIGINT_DEFAULT + """
import sys, json
from pathlib import Path
from condense_nb import cli
kw = json.loads(sys.argv[1])
cli.PIPELINES, cli.DEPENDS, cli.OUTPUTS = [tuple(x) for x in kw["registry"]], {}, {}
cli.find_pipelines_dir = lambda: Path(kw["pipelines_dir"])
sys.exit(cli.main(sys.argv[2:]))
"""


def start_runner(kw: dict, *argv, env=None) -> subprocess.Popen:
    "`condense-nb` in a new process with the throwaway registry of `kw`."
    arg = json.dumps(dict(registry=kw["registry"], pipelines_dir=str(kw["pipelines_dir"])))
    return subprocess.Popen([sys.executable, "-c", RUNNER, arg, "reproduce", "--preset", "tiny", "--root", str(kw["root"]),
                             "--runs", str(kw["runs"]), *argv], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def assert_locked_out(kw: dict, tmp: Path, first: subprocess.Popen, stage: str, *argv):
    "A runner started now stops at once: exit 1, one line naming `stage`'s lock and the PID of `first`, which holds it."
    run = start_runner(kw, *argv)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1
    one_line_error(err, str((tmp/f"runs/tiny/.{stage}.lock").resolve()), f"is locked by PID {first.pid}")


@linux_only
@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_second_run_into_one_folder_stops_naming_the_lock_and_pid(tmp_path):
    kw = setup(tmp_path, {"alpha": SLOW})
    first = start_runner(kw, env={"STAGE_SLEEP": "20"})
    try:
        wait_for(lambda: owned(f"{first.pid}-"))                              # its kernel is running
        assert_locked_out(kw, tmp_path, first, "alpha")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    assert wait_gone(f"{first.pid}-") == []


@linux_only
@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_an_up_to_date_stage_is_not_held_while_a_later_one_runs(tmp_path):
    "A run that skips alpha as up to date lets go of alpha's lock: a second run may select alpha while the first runs beta."
    kw = setup(tmp_path, {"alpha": SAME, "beta": SLOW, "gamma": SAME})
    assert cli.reproduce("tiny", **kw, only="alpha") == 0
    first = start_runner(kw, "--only", "alpha,beta", env={"STAGE_SLEEP": "30"})
    try:
        wait_for(lambda: owned(f"{first.pid}-"))                              # beta's kernel is running; alpha was skipped
        second = start_runner(kw, "--only", "alpha,gamma")
        _, err = second.communicate(timeout=90)
        assert second.returncode == 0, err
        assert count(tmp_path, "alpha") == 1 and count(tmp_path, "gamma") == 1   # alpha read, not rerun
        assert (tmp_path/"runs/tiny/.beta.lock").exists() and first.poll() is None
        assert_locked_out(kw, tmp_path, first, "beta", "--only", "beta")         # the running stage stays held
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


# ---------------------------------------------------------------- orphans

ORPHANS = """
import subprocess, sys, time
from pathlib import Path
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)   # outside the kernel's group
(Path(out_dir)/"kid.pid").write_text(str(kid.pid))
time.sleep(300)
"""


@linux_only
@pytest.mark.kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_kernels_die_with_the_runner(tmp_path, sig):
    "Whatever ends the runner, even SIGKILL, its kernel and what the kernel started end too; the rerun works."
    kw = setup(tmp_path, {"alpha": ORPHANS})
    run = start_runner(kw)
    kid = tmp_path/"runs/tiny/alpha/kid.pid"
    try: wait_for(kid.exists)
    except AssertionError: run.kill(); raise
    kernel_and_kid = owned(f"{run.pid}-")
    assert int(kid.read_text()) in kernel_and_kid and len(kernel_and_kid) >= 2
    run.send_signal(sig)
    _, err = run.communicate(timeout=60)
    assert wait_gone(f"{run.pid}-") == []                                       # no orphan left
    if sig == signal.SIGKILL: assert run.returncode == -sig
    else:
        assert run.returncode == 128 + sig and "Traceback" not in err
        last = err.strip().splitlines()[-1]                                     # (after papermill's progress bar)
        assert f"interrupted ({signal.Signals(sig).name})" in last and "a rerun resumes" in last, err
        assert "| alpha | [00_alpha.ipynb](alpha/00_alpha.ipynb) | interrupted |" in (tmp_path/"runs/tiny/report.md").read_text()
    assert not (tmp_path/"runs/tiny/alpha/DONE.json").exists()
    write_nb(tmp_path/"pipelines/00_alpha.ipynb", "alpha", SAME)
    assert cli.reproduce("tiny", **kw) == 0                                     # the rerun takes over any lock and finishes


# ---------------------------------------------------------------- kill and resume, the real stages

@linux_only
@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_kill_and_resume_tiny(tmp_path):
    "Kill `reproduce --only data,teacher` at a random moment with a random signal: no kernel survives, and the rerun ends with the same teacher as an uninterrupted run."
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30))); rng = random.Random(seed)
    sig, phase = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT]), rng.choice(["start", "checkpoint"])
    delay = rng.uniform(0.5, 12.0) if phase == "start" else rng.uniform(0.0, 1.0)
    print(f"KILL_SEED={seed}: {signal.Signals(sig).name} {delay:.1f} s after the {phase}")
    common = dict(root=tmp_path/"data", only="data,teacher", progress=False, log_output=False)
    assert cli.reproduce("tiny", runs=tmp_path/"ref", **common) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-c", SIGINT_DEFAULT + "import sys; from condense_nb.cli import main; sys.exit(main(sys.argv[1:]))",
                            "reproduce", "--preset", "tiny", "--only", "data,teacher", "--root", str(tmp_path/"data"),
                            "--runs", str(tmp_path/"killed")], cwd=ROOT, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path/"killed/tiny/teacher/ckpt/latest.json"                     # the teacher's first committed checkpoint
    if phase == "checkpoint": wait_for(lambda: latest.exists() or run.poll() is not None, timeout=120)
    time.sleep(delay)
    run.send_signal(sig); run.wait(timeout=120)
    assert wait_gone(f"{run.pid}-") == []                                       # no kernel survives the runner
    unfinished = not (tmp_path/"killed/tiny/teacher/DONE.json").exists()
    assert cli.reproduce("tiny", runs=tmp_path/"killed", **common) == 0
    a, b = (tmp_path/"ref/tiny/teacher/teacher.safetensors"), (tmp_path/"killed/tiny/teacher/teacher.safetensors")
    assert a.read_bytes() == b.read_bytes(), f"KILL_SEED={seed}"                # bit-identical to the uninterrupted run
    resumed = json.loads((tmp_path/"killed/tiny/teacher/metrics.json").read_text())["resumed_from"]
    if phase == "checkpoint" and unfinished: assert resumed > 0, f"KILL_SEED={seed}"   # it resumed from the checkpoint
    assert not list((tmp_path/"killed").rglob("*.tmp")) and not list((tmp_path/"data/tiny").rglob(".*.tmp"))
    assert not list((tmp_path/"killed/tiny").glob(".*.lock")) and not (tmp_path/"data/.tiny.lock").exists()
    done = {s: (tmp_path/"killed/tiny"/s/"DONE.json").read_bytes() for s in ("data", "teacher")}
    assert cli.reproduce("tiny", runs=tmp_path/"killed", **common) == 0         # and now both are up to date
    assert done == {s: (tmp_path/"killed/tiny"/s/"DONE.json").read_bytes() for s in ("data", "teacher")}
