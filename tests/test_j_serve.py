"""RELIABILITY.md J13 and J14 on imgclf-serve: clients that trickle their uploads never block the others (the body is
read under a deadline and a minimum rate, before a turn is taken), and Ctrl-C / SIGTERM stop the server cleanly
with exit status 130 / 143 and no traceback."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("fastapi", reason="the web app's packages are not installed: pip install -e '.[dev]'")

from serve_helpers import start_server, stop_server  # noqa: E402


# --- J14: Ctrl-C and SIGTERM --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_J14_ctrl_c_and_sigterm_shut_the_server_down_cleanly_with_exit_130_and_143(
        trained_tiny, signum: int, status: int) -> None:
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
