"""Loaded by every Python process a test starts with tests/harness first on PYTHONPATH.

CIR_SIMULATED_NCCL=1 installs simulated_nccl (NCCL's device rule on a CPU machine).
"""

import os

if os.environ.get("CIR_SIMULATED_NCCL") == "1":
    import simulated_nccl

    simulated_nccl.install()
