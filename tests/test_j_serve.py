"""docs/reliability.md J13 and J14 on imgclf-serve: clients that trickle their uploads never block the others (the body is
read under a deadline and a minimum rate, before a turn is taken), and Ctrl-C / SIGTERM stop the server cleanly
with exit status 130 / 143 and no traceback."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web app's packages are not installed: pip install -e '.[dev]'")

import httpx  # noqa: E402
from serve_helpers import MULTIPART, multipart, noise_png, serve_in_thread, start_server, stop_server  # noqa: E402

from imgclf.inference import Predictor  # noqa: E402
from imgclf.serve.app import Settings, create_app  # noqa: E402
from imgclf.serve.model import model_card  # noqa: E402
from imgclf.serve.pacing import BodyBudget, Pace, paced  # noqa: E402
from imgclf.serve.uploads import Limits, UploadError  # noqa: E402
from imgclf.serve.worker import ModelWorker  # noqa: E402

KB = 1024


def sample(tiny_folder: Path) -> tuple[str, bytes]:
    path = sorted((tiny_folder / "test" / "circle").glob("*.png"))[0]
    return path.name, path.read_bytes()


def head(length: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: {MULTIPART}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class Trickle(threading.Thread):
    """A client that sends a request's headers, then its body one byte every ``every`` seconds until the server
    answers or closes the connection (or ``give_up`` seconds pass); keeps what was answered and how much it sent."""

    def __init__(self, address: tuple[str, int], body: bytes, every: float = 0.25, give_up: float = 40) -> None:
        super().__init__(daemon=True)
        self.address, self.body, self.every, self.give_up = address, body, every, give_up
        self.sent, self.answer, self.answered = 0, b"", threading.Event()

    def run(self) -> None:
        stop = time.monotonic() + self.give_up
        with socket.create_connection(self.address, timeout=self.every) as sock:
            sock.sendall(head(len(self.body)))
            while time.monotonic() < stop and not self.answered.is_set():
                try:
                    if self.sent < len(self.body):
                        sock.sendall(self.body[self.sent : self.sent + 1])
                        self.sent += 1
                    chunk = sock.recv(65536)  # waits up to `every`: the trickle's pace
                except TimeoutError:
                    continue
                except OSError:
                    chunk = b""  # reset: closed by the server
                if chunk:
                    self.answer += chunk
                    continue
                self.answered.set()  # closed, with or without an answer


# --- J13: slow clients --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_J13_clients_trickling_uploads_never_block_a_fast_client_and_get_408_at_their_deadline(
    trained_tiny, tiny_folder: Path
) -> None:
    timeout, active, slow = 6, 2, 4  # more slow clients than turns
    server = start_server(
        "--model",
        str(trained_tiny[1] / "best.pt"),
        "--max-active",
        str(active),
        "--body-timeout",
        str(timeout),
        "--min-body-rate",
        "0",
    )
    name, data = sample(tiny_folder)
    try:
        with server.client(timeout=10) as client:  # a first request: the model's first pass is not what is tested
            assert client.post("/predict", files=[("file", (name, data))]).status_code == 200
        body = multipart([(name, data)])
        trickles = [Trickle((server.host, server.port), body) for _ in range(slow)]
        for trickle in trickles:
            trickle.start()
        wait_until = time.monotonic() + 10
        while min(t.sent for t in trickles) < 3 and time.monotonic() < wait_until:
            time.sleep(0.05)  # every slow request has reached the app and is reading its body
        # half the slow clients' deadline: on the old server every turn was held by a slow body and this waited 30 s
        with server.client(timeout=timeout / 2) as client:
            response = client.post("/predict", files=[("file", (name, data))])
        still_open = [not t.answered.is_set() for t in trickles]
        assert response.status_code == 200 and response.json()["predictions"][0]["class"] == "circle", response.text
        assert all(still_open), "a slow client was answered before the fast one: the test proves nothing"
        for trickle in trickles:
            trickle.join(timeout=timeout + 30)
        for trickle in trickles:
            assert trickle.answered.is_set() and trickle.sent < len(body), (trickle.sent, len(body))
            assert trickle.answer.startswith(b"HTTP/1.1 408"), trickle.answer[:300]
            assert b"--body-timeout of 6 s" in trickle.answer and b"connection: close" in trickle.answer.lower()
        assert server.healthy(), server.log()[-3000:]
    finally:
        stop_server(server)


async def _pace(
    chunks: list[bytes], every: float, pace: Pace, *, then_silent: bool = False
) -> tuple[int, UploadError | None]:
    """Feed ``chunks`` to :func:`paced` one per ``every`` seconds, the last ending the body unless ``then_silent``
    (the client then sends nothing more); the bytes it gave and how it ended."""
    left = list(chunks)

    async def receive() -> dict:
        await asyncio.sleep(every)
        if not left:
            await asyncio.sleep(3600)  # a client that stopped sending
        return {"type": "http.request", "body": left.pop(0), "more_body": bool(left) or then_silent}

    received = 0
    try:
        async for chunk in paced(receive, pace):
            received += len(chunk)
    except UploadError as exc:
        return received, exc
    return received, None


def test_J13_a_body_under_the_minimum_rate_or_past_the_deadline_is_refused_408() -> None:
    # 1 byte per 10 ms = 100 B/s, under 1 KB/s: refused once the 0.3 s grace is over, long before the 30 s deadline
    received, error = asyncio.run(asyncio.wait_for(_pace([b"x"] * 1000, 0.01, Pace(30, 1 * KB, 0.3)), 20))
    assert error is not None and error.status == 408 and 0 < received < 200, (received, error)
    assert "--min-body-rate of 1 KB/s (after its --body-grace of 0.3 s)" in str(error)
    # a client that stops sending: refused at the deadline, whatever the rate
    received, error = asyncio.run(asyncio.wait_for(_pace([b"abc"], 0.01, Pace(0.3, 0, 0), then_silent=True), 20))
    assert received == 3 and error is not None and error.status == 408 and "--body-timeout of 0.3 s" in str(error)
    # a body that comes at its pace is read whole
    received, error = asyncio.run(asyncio.wait_for(_pace([b"x" * 4096] * 5, 0.01, Pace(5, 1 * KB, 0.1)), 20))
    assert (received, error) == (5 * 4096, None)


def test_J13_bodies_read_outside_the_turns_are_held_to_the_servers_memory_budget(trained_tiny, tiny_folder) -> None:
    # --max-active 1 x --max-request-mb 0.5: 512 KB of bodies at once, however many clients are sending
    predictor = Predictor.load(trained_tiny[1] / "best.pt", device="cpu")
    settings = Settings(
        limits=Limits(max_file_bytes=400 * KB, max_request_bytes=512 * KB),
        max_active=1,
        pace=Pace(timeout=60, min_rate=0),
    )
    assert BodyBudget(settings.max_active * settings.limits.max_request_bytes).limit == 512 * KB
    app = create_app(ModelWorker(predictor), model_card(predictor, trained_tiny[1] / "best.pt"), settings)
    big = multipart([("noise.png", noise_png(300))])  # ~270 KB
    assert 256 * KB < len(big) < 400 * KB
    with serve_in_thread(app) as url:
        address = (url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]))
        with socket.create_connection(address, timeout=10) as held:
            held.sendall(head(len(big)) + big[:-10])  # all but its last bytes: the server holds ~270 KB of it
            time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=10) as client:
                response = client.post("/predict", content=big, headers={"Content-Type": MULTIPART})
                assert response.status_code == 503 and "holding" in response.json()["detail"], response.text
                held.sendall(big[-10:])
                assert held.recv(65536).startswith(b"HTTP/1.1 200")
                name, data = sample(tiny_folder)  # its bytes given back, the next request is taken
                assert client.post("/predict", files=[("file", (name, data))]).status_code == 200
                assert client.post("/predict", content=big, headers={"Content-Type": MULTIPART}).status_code == 200


# --- J14: Ctrl-C and SIGTERM --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_J14_ctrl_c_and_sigterm_shut_the_server_down_cleanly_with_exit_130_and_143(
    trained_tiny, signum: int, status: int
) -> None:
    server = start_server("--model", str(trained_tiny[1] / "best.pt"))
    try:
        assert server.healthy(), server.log()[-3000:]
        server.process.send_signal(signum)
        assert server.wait(timeout=30) == status, server.log()[-3000:]
    finally:
        stop_server(server)
    log = server.log()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    assert "Application shutdown complete" in log  # the graceful shutdown ran: the model thread was stopped
