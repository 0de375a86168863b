"""What the web app's tests share: ``imgclf-serve`` run as users run it (a real uvicorn process on
127.0.0.1 and a port the OS picks), the uploads they send, and what /proc says about the server."""

from __future__ import annotations

import collections
import io
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STARTED = re.compile(r"Uvicorn running on http://(\S+):(\d+)")
BOUNDARY = "imgclf-test-boundary"


@dataclass
class Server:
    """A running ``imgclf-serve`` process; its output is collected by a thread (never a file: see ``no_files``)."""

    process: subprocess.Popen
    host: str = ""
    port: int = 0
    output: collections.deque = field(default_factory=lambda: collections.deque(maxlen=5000))
    collector: threading.Thread | None = None

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has ended and all its output is in :attr:`output` (bounded)."""
        status = self.process.wait(timeout=timeout)
        if self.collector is not None:
            self.collector.join(timeout=timeout)
        return status

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return "\n".join(self.output)

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=10).json()["status"] == "ok"
        except (httpx.HTTPError, ValueError, KeyError):
            return False


def start_server(*args: str, cwd: Path = ROOT, no_files: bool = False, timeout: float = 90) -> Server:
    """``python -m imgclf.cli.serve ARGS --port 0``, waited for (bounded) until uvicorn says where it listens.

    ``no_files``: run it under ``RLIMIT_FSIZE=0``, so writing any byte to a regular file fails (EFBIG;
    Python ignores SIGXFSZ): a server that spools an upload to disk cannot answer it.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    preexec: Callable[[], None] | None = None
    if no_files:

        def preexec() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    process = subprocess.Popen(
        [sys.executable, "-m", "imgclf.cli.serve", *args, "--port", "0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec,
    )
    server = Server(process)
    server.collector = threading.Thread(target=_collect, args=(server,), daemon=True)
    server.collector.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = next((STARTED.search(line) for line in list(server.output) if STARTED.search(line)), None)
        if found:
            server.host, server.port = found.group(1), int(found.group(2))
            return server
        time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"imgclf-serve did not start within {timeout:g} s (exit {process.poll()}):\n{server.log()}")


def _collect(server: Server) -> None:
    for line in server.process.stdout:
        server.output.append(line.rstrip("\n"))


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=15)


@contextmanager
def serve_in_thread(app, timeout: float = 30) -> Iterator[str]:
    """Run an ASGI app on uvicorn in a thread of this process (on 127.0.0.1, a free port); yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start in its thread")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


# --- uploads ------------------------------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb(side: int = 9000) -> bytes:
    """A 1-bit PNG of ``side`` x ``side`` pixels in a few KB (81 megapixels at 9000: ~2 GB to decode)."""
    return png(Image.new("1", (side, side)))


def noise_png(side: int, seed: int = 0) -> bytes:
    """A PNG of random pixels: about 3 bytes per pixel, whatever the compression."""
    return png(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)))


def truncated_png(data: bytes) -> bytes:
    """A PNG cut in its pixel data: the header reads, decoding fails."""
    return data[: len(data) // 2]


def multipart(files: Sequence[tuple[str, bytes]], field_name: str = "file") -> bytes:
    """A multipart/form-data body (boundary :data:`BOUNDARY`) with one part per (file name, bytes)."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """The body as a generator: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def raw_request(server: Server, head: bytes, body: bytes, timeout: float = 15) -> bytes:
    """Send ``head`` (request line and headers) and ``body`` on a socket as they are; return all it answers."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            sock.sendall(body)
        except OSError:
            pass  # the server may stop reading once it has answered: the answer is what counts
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass  # a reset after the answer
        return answer


# --- /proc --------------------------------------------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (Linux: ``5`` to /proc/PID/clear_refs), where allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # not our process to reset, or an old kernel: the peak then counts from the process's start


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6, from /proc/net)."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found
