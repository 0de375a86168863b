"""Load on imgclf-serve: N concurrent clients on 127.0.0.1 for a fixed time, with a burst of malformed uploads.

    python benchmarks/serve_load.py (--experiment NAME | --model FILE) [--clients 1,8,32] [--seconds 8]
                                    [--image-size 320x240] [--burst 30]

Starts the real server (``python -m imgclf.cli.serve --port 0``, its defaults), then for each client count runs
that many threads, each posting one JPEG at a time (photos made here, ``--image-size``, sent as they are) for
``--seconds``; halfway through, a burst of ``--burst`` malformed uploads (junk bytes, a truncated PNG, a 9000x9000
decompression bomb, a body over the size limit sent chunked, a broken multipart body) goes in from other threads.
Prints requests/s, p50/p99 latency of the good requests, errors (any good request not answered 200 with
predictions: 0 expected), the malformed uploads by status (all 4xx expected), and the server's memory (RSS
before, after, peak). Traffic goes to 127.0.0.1 only; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import (  # noqa: E402  the tests' helpers: the server as users start it, the bad uploads
    MULTIPART,
    bomb,
    chunks,
    memory,
    multipart,
    noise_png,
    start_server,
    stop_server,
    truncated_png,
)

MB = 1024 * 1024


def photos(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """JPEGs of smooth random colour fields with noise: they compress and decode like photos, not like flat fills."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (size[1], size[0], 3)), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buffer, format="JPEG", quality=88)
        out.append(buffer.getvalue())
    return out


def malformed_uploads() -> list[tuple[str, dict]]:
    """(what, httpx.post keyword arguments) for each kind of bad upload."""
    return [
        ("junk bytes", {"files": [("file", ("junk.jpg", np.random.default_rng(1).bytes(5000)))]}),
        ("truncated PNG", {"files": [("file", ("cut.png", truncated_png(noise_png(128))))]}),
        ("9000x9000 bomb", {"files": [("file", ("bomb.png", bomb(9000)))]}),
        ("over the size limit, chunked", {"content": None, "headers": {"Content-Type": MULTIPART}}),
        (
            "broken multipart",
            {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        ),
    ]


def run(url: str, clients: int, seconds: float, images: list[bytes], burst: int, oversize: bytes) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    statuses: Counter = Counter()
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = number
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    response = http.post("/predict", files=[("file", (f"{i}.jpg", images[i % len(images)]))])
                    ok = response.status_code == 200 and response.json().get("predictions")
                    problem = None if ok else f"{response.status_code} {response.text[:100]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with lock:
                    (errors.append(problem) if problem else latencies.append(time.perf_counter() - start))
                i += clients

    def bad(number: int) -> None:
        kinds = malformed_uploads()
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(number, burst, 3):
                _, kwargs = kinds[i % len(kinds)]
                if "content" in kwargs and kwargs["content"] is None:
                    kwargs = {**kwargs, "content": chunks(oversize)}
                try:
                    status = http.post("/predict", **kwargs).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    burst_threads = [threading.Thread(target=bad, args=(n,)) for n in range(3)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds / 2)
    for thread in burst_threads:
        thread.start()
    for thread in threads + burst_threads:
        thread.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "malformed": dict(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="serve experiments/NAME/best.pt")
    source.add_argument("--model", type=Path, help="a checkpoint or an ONNX export")
    parser.add_argument("--experiments", type=Path, default=Path("experiments"))
    parser.add_argument("--clients", default="1,8,32", help="client counts, one run each (default 1,8,32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run (default 8)")
    parser.add_argument("--image-size", default="320x240", help="the JPEGs sent (default 320x240)")
    parser.add_argument("--burst", type=int, default=30, help="malformed uploads sent mid-run (default 30)")
    args = parser.parse_args()
    model = (args.model or args.experiments / args.experiment / "best.pt").resolve()  # the server runs elsewhere
    width, height = map(int, args.image_size.lower().split("x"))
    images = photos(16, (width, height))
    oversize = multipart([("big.png", b"\x89PNG" + bytes(11 * MB))])  # over the default --max-upload-mb 10
    server = start_server("--model", str(model))
    rows = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:  # warm up
            for image in images:
                http.post("/predict", files=[("file", ("warm.jpg", image))])
        before = memory(server.pid)
        for clients in map(int, args.clients.split(",")):
            served = httpx.get(f"{server.url}/health", timeout=10).json()["served"]
            rows.append(run(server.url, clients, args.seconds, images, args.burst, oversize))
            now = httpx.get(f"{server.url}/health", timeout=10).json()["served"]
            rows[-1].update(
                memory=memory(server.pid),
                per_pass=(now["images"] - served["images"]) / max(now["batches"] - served["batches"], 1),
            )
    finally:
        stop_server(server)
    print(
        f"model {model}; {width}x{height} JPEGs (~{np.mean([len(i) for i in images]) / 1024:.0f} KB); "
        f"{args.seconds:g} s per run; server RSS before the runs {before['VmRSS'] / MB:.0f} MB"
    )
    print(
        "| clients | requests/s | p50 ms | p99 ms | errors | images per pass | malformed burst: answers "
        "| RSS after MB | peak MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        burst = ", ".join(f"{k}: {v}" for k, v in sorted(r["malformed"].items(), key=str))
        print(
            f"| {r['clients']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | "
            f"{r['per_pass']:.1f} | {burst} | {r['memory']['VmRSS'] / MB:.0f} | {r['memory']['VmHWM'] / MB:.0f} |"
        )
    for r in rows:
        if r["errors"]:
            print(f"{r['clients']} clients: first error: {r['first_error']}")


if __name__ == "__main__":
    main()
