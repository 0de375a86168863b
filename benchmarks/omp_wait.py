"""How OpenMP's idle threads wait (OMP_WAIT_POLICY) changes imgclf's CPU steps, quiet and with other processes busy.

    python benchmarks/omp_wait.py [--busy 0 2] [--threads 2] [--repeats 5]

PyTorch's CPU kernels run on OpenMP threads. With the default (``ACTIVE``: spin a while before sleeping), a thread
that finishes its share spins waiting for the next parallel region; when other processes want the cores (a laptop
with a browser, a second training job, a sweep's jobs) the spinning threads take turns with them and every small
parallel region waits for a descheduled thread. ``PASSIVE`` sleeps at once. Each workload runs in a fresh process
per policy (the policy is read when OpenMP starts), with ``--busy N`` extra processes spinning on the CPU beside it:

- ``head``: a training step of transfer's head on cached features (3840 -> 512 -> 5, batch 32, AdamW);
- ``scratch``: a training step of the scratch recipe's SmallResNet (32 px, batch 64, AdamW);
- ``lite0``: an eval pass of EfficientNet-Lite0 on 8 images of 224 px (the frozen passes on PyTorch).

It prints milliseconds per step (the best of ``--repeats`` timings of 10 steps) for each policy and load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Sequence

WORKLOADS = ("head", "scratch", "lite0")


def run_workload(name: str, threads: int, repeats: int) -> float:
    """Milliseconds per step of ``name`` in this process (the policy is whatever OpenMP started with)."""
    import torch

    from imgclf.models.efficientnet_lite import EfficientNetLite
    from imgclf.models.small_resnet import SmallResNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name == "lite0":
        net = EfficientNetLite(num_classes=5, variant="lite0", pretrained=False).eval()
        images = torch.rand(8, 3, 224, 224)

        def step() -> None:
            with torch.no_grad():
                net(images)

    else:
        if name == "head":
            net = torch.nn.Sequential(
                torch.nn.Dropout(0.5),
                torch.nn.Linear(3840, 512),
                torch.nn.ReLU(),
                torch.nn.Dropout(0.5),
                torch.nn.Linear(512, 5),
            )
            x, y = torch.randn(32, 3840), torch.randint(0, 5, (32,))
        else:
            net = SmallResNet(num_classes=10, image_size=32).to(memory_format=torch.channels_last)
            x = torch.rand(64, 3, 32, 32).to(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (64,))
        optimizer = torch.optim.AdamW(net.parameters(), fused=True)

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            step()
        best = min(best, (time.perf_counter() - start) / 10)
    return best * 1000


def spin(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    while not stop.is_set():
        sum(range(10_000))


def measure(name: str, policy: str, threads: int, repeats: int) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import omp_wait; "
    code += f"print(omp_wait.run_workload({name!r}, {threads}, {repeats}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="processes spinning beside it")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores, {args.threads} torch threads; load average {os.getloadavg()[0]:.1f} at the start")
    print(
        "\n| workload | busy processes | ACTIVE ms/step | PASSIVE ms/step | PASSIVE speed-up |\n|---|---|---|---|---|"
    )
    for busy in args.busy:
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            for name in WORKLOADS:
                active = measure(name, "ACTIVE", args.threads, args.repeats)
                passive = measure(name, "PASSIVE", args.threads, args.repeats)
                print(f"| {name} | {busy} | {active:.1f} | {passive:.1f} | {active / passive:.2f}x |", flush=True)
        finally:
            stop.set()
            for process in spinners:
                process.join()
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
