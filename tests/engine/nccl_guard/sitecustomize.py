"""Loads the NCCL guard (nccl_guard_harness.py) into each torchrun worker of tests/engine/test_nccl_guard.py.

Python imports `sitecustomize` at start-up from PYTHONPATH; the test puts this folder there and
sets NCCL_GUARD_REPORT, so only its torchrun workers (LOCAL_RANK set) are guarded.
"""
import os

if os.environ.get("NCCL_GUARD_REPORT") and "LOCAL_RANK" in os.environ:
    import nccl_guard_harness

    nccl_guard_harness.install(os.environ["NCCL_GUARD_REPORT"])
