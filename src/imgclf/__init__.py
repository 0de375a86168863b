"""imgclf: Hydra-configured experiments for image classification with PyTorch."""

import os

# PyTorch's CPU kernels run on OpenMP threads, which by default spin while they wait for the next parallel region.
# When other processes want the cores (a browser, a second run, a sweep's jobs) the spinning threads take turns
# with them and every small region waits for a descheduled thread: measured on 2 cores with other work running,
# a training step of transfer's head took 4.8-9.7x longer and the scratch ResNet's 2.2x (benchmarks/omp_wait.py).
# Sleeping at once costs a quiet machine little. Set here, before anything imports torch (OpenMP reads it when it
# starts); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
