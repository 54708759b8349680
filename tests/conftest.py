"""Shared test setup: a quiet, offline, CPU-friendly environment for every test (and the kernels they start)."""
import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # import condense_nb from this checkout even if not installed

os.environ.setdefault("MPLBACKEND", "Agg")                      # no display; figures go to files
os.environ.setdefault("HF_HUB_OFFLINE", "1")                    # never try to download models
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_threads = "1"   # one thread per process: on 2 shared cores, 2 threads per op were 2-30x slower (OpenMP spin)
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"): os.environ.setdefault(_v, _threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: starts Jupyter kernels through papermill (about a second each)")


import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    "Every test runs torch single-threaded (the env vars above cover a torch imported after this file; this covers one imported before)."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
