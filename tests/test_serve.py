"""imgclf-serve, the web app: a real uvicorn process on 127.0.0.1 answering real HTTP (httpx, raw sockets), and
the app on uvicorn in a thread of the test process where a fault is injected into the model. The browser test is in
test_browser.py; the load benchmark is benchmarks/serve_load.py."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web app's packages are not installed: pip install -e '.[dev]'")

import httpx  # noqa: E402
from serve_helpers import (  # noqa: E402
    MULTIPART,
    Server,
    bomb,
    chunks,
    listening_addresses,
    memory,
    multipart,
    noise_png,
    raw_request,
    reset_peak,
    serve_in_thread,
    start_server,
    stop_server,
    truncated_png,
)

from helpers import copy_trained  # noqa: E402
from imgclf.cli import serve as serve_cli  # noqa: E402
from imgclf.inference import Predictor  # noqa: E402
from imgclf.serve.app import Settings, create_app  # noqa: E402
from imgclf.serve.model import model_card  # noqa: E402
from imgclf.serve.worker import ModelWorker  # noqa: E402

MAX_PIXELS = 3_000_000  # the test server's --max-pixels: a 2000x2000 image (4 MP) is over it, 40 MP (the default) not
MB = 1024 * 1024
DECOY = b"not an image: the server opened the client's file name as a path"


@dataclass
class Served:
    server: Server
    model: Path
    root: Path  # the server runs in root/a/b; root/etc/passwd.png is a decoy
    samples: list[Path]  # one test image per class
    expected: list[dict[str, float]]  # the torch Predictor's probabilities of each sample, by class


@pytest.fixture(scope="module")
def served(trained_tiny, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module, as a user starts it but with small limits, and under RLIMIT_FSIZE=0: any byte
    it writes to a file fails, so every answer it gives was made without writing the upload to disk."""
    root = tmp_path_factory.mktemp("serve")
    model = root / "models" / "tiny" / "best.pt"
    model.parent.mkdir(parents=True)
    shutil.copy(trained_tiny[1] / "best.pt", model)
    (root / "a" / "b").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd.png").write_bytes(DECOY)
    samples = [sorted((tiny_folder / "test" / name).glob("*.png"))[0] for name in ("circle", "square", "stripes")]
    predictor = Predictor.load(model, device="cpu")
    probs = predictor.probabilities([predictor.load_image(p) for p in samples]).numpy()
    expected = [dict(zip(predictor.classes, map(float, row), strict=True)) for row in probs]
    server = start_server(
        "--model",
        str(model),
        "--max-upload-mb",
        "2",
        "--max-request-mb",
        "4",
        "--max-files",
        "4",
        "--max-pixels",
        str(MAX_PIXELS),
        "--min-confidence",
        "0.99",
        cwd=root / "a" / "b",
        no_files=True,
    )
    try:
        yield Served(server, model, root, samples, expected)
    finally:
        stop_server(server)


def post(server: Server, *files: tuple[str, bytes], **kwargs) -> tuple[int, dict]:
    with server.client() as client:
        response = client.post("/predict", files=[("file", f) for f in files], **kwargs)
    return response.status_code, response.json()


def by_class(result: dict) -> dict[str, float]:
    return {p["class"]: p["probability"] for p in result["predictions"]}


def assert_up(server: Server) -> None:
    assert server.process.poll() is None and server.healthy(), server.log()[-3000:]


# --- what it answers ------------------------------------------------------------------------------------------------


def test_predictions_equal_the_torch_predictors_for_the_same_file(served: Served) -> None:
    for path, expected in zip(served.samples, served.expected, strict=True):
        status, body = post(served.server, (path.name, path.read_bytes()))
        assert status == 200, body
        assert body["filename"] == path.name
        assert [p["class"] for p in body["predictions"]] == sorted(expected, key=expected.get, reverse=True)
        assert by_class(body) == pytest.approx(expected, abs=1e-6)
        assert body["predictions"][0]["name"] == body["predictions"][0]["class"]  # no display names in this model
        assert body["low_confidence"] == (max(expected.values()) < 0.99)
    with served.server.client() as client:
        assert client.get("/health").json()["classes"] == 3


def test_several_files_answer_in_upload_order_with_an_error_in_place(served: Served) -> None:
    files = [(p.name, p.read_bytes()) for p in served.samples]
    files.insert(1, ("notes.png", b"just some text"))
    status, body = post(served.server, *files)
    assert status == 200
    results = body["results"]
    assert [r["filename"] for r in results] == [name for name, _ in files]
    assert results[1]["status"] == 422 and "not an image" in results[1]["error"] and "predictions" not in results[1]
    for result, expected in zip([results[0], *results[2:]], served.expected, strict=True):
        assert by_class(result) == pytest.approx(expected, abs=1e-6)


def test_the_page_its_assets_and_the_model_card_are_served_by_the_app(served: Served) -> None:
    with served.server.client() as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="file"' in page.text and "/static/app.js" in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # nothing is loaded from another host
        assert 'fetch("/predict"' in client.get("/static/app.js").text
        assert client.get("/static/style.css").status_code == 200
        assert client.get("/static/..%2F..%2Fetc%2Fpasswd.png").status_code == 404
        assert client.get("/docs").status_code == 404  # FastAPI's docs would load scripts from a CDN
        card = client.get("/card").json()
    assert card["model"] == "tiny" and card["classes"] == ["circle", "square", "stripes"]
    assert card["architecture"] == "SmallCNN" and card["test"] is None  # no test report beside this copy
    assert card["top_k"] == 3 and card["limits"] == {
        "max_file_bytes": 2 * MB,
        "max_request_bytes": 4 * MB,
        "max_files": 4,
    }
    assert str(served.root) not in json.dumps(card)  # no server path leaks


def test_model_card_reads_the_test_report_of_this_checkpoint_or_a_card_file(trained_tiny, tmp_path: Path) -> None:
    exp = tmp_path / "tiny"
    exp.mkdir()
    shutil.copy(trained_tiny[1] / "best.pt", exp / "best.pt")
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    (exp / "test").mkdir()
    report = {
        "checkpoint": "/elsewhere/experiments/tiny/best.pt",
        "split": "test",
        "samples": 18,
        "accuracy": 0.944,
        "accuracy_ci": [0.833, 1.0],
        "ci_level": 0.95,
    }
    (exp / "test" / "metrics.json").write_text(json.dumps(report))
    assert model_card(predictor, exp / "best.pt")["test"] == {
        "accuracy": 0.944,
        "accuracy_ci": [0.833, 1.0],
        "ci_level": 0.95,
        "samples": 18,
        "split": "test",
    }
    shutil.copy(exp / "best.pt", exp / "last.pt")
    assert model_card(predictor, exp / "last.pt")["test"] is None  # best.pt's report is not last.pt's
    # an export's card (imgclf.deploy.model_card) names the experiment and the evaluation of what was exported
    (exp / "model_card.json").write_text(
        json.dumps(
            {
                "checkpoint": {"experiment": "shapes-v2"},
                "training": {"model": {"_target_": "imgclf.models.x.Net"}},
                "evaluation": {
                    "evaluated": True,
                    "split": "test",
                    "samples": 30,
                    "ci_level": 0.95,
                    "metrics": {"accuracy": 0.5, "accuracy_ci": [0.3, 0.7]},
                },
            }
        )
    )
    card = model_card(predictor, exp / "best.pt")
    assert card["model"] == "shapes-v2" and card["architecture"] == "Net" and len(card["classes"]) == 3
    assert card["test"] == {
        "accuracy": 0.5,
        "accuracy_ci": [0.3, 0.7],
        "ci_level": 0.95,
        "samples": 30,
        "split": "test",
    }


@pytest.mark.slow
def test_an_onnx_export_is_served_without_torch_and_answers_as_its_checkpoint(
    served: Served, trained_tiny, tmp_path: Path
) -> None:
    from imgclf.deploy.export import export

    _, exp = copy_trained(trained_tiny, tmp_path)
    model = export(exp / "best.pt", exp / "export", parity_samples=10).model
    server = start_server("--model", str(model), "--top-k", "2")
    try:
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "onnxruntime" in maps and "libtorch" not in maps  # the export runs without torch loaded
        with server.client() as client:
            card = client.get("/card").json()
            for path, expected in zip(served.samples, served.expected, strict=True):
                body = client.post("/predict", files=[("file", (path.name, path.read_bytes()))]).json()
                top2 = sorted(expected, key=expected.get, reverse=True)[:2]
                assert [p["class"] for p in body["predictions"]] == top2
                assert by_class(body) == pytest.approx({c: expected[c] for c in top2}, abs=1e-4)  # the export's parity
    finally:
        stop_server(server)
    assert card["model"] == "tiny" and card["architecture"] == "SmallCNN" and card["file"] == "model.onnx"


# --- F3: uploads --------------------------------------------------------------------------------------------------


def test_F3_junk_and_truncated_uploads_get_422_with_a_message_and_the_server_stays_up(served: Served) -> None:
    good = served.samples[0].read_bytes()
    cases = {
        "junk.png": (np.random.default_rng(0).bytes(3000), "not an image"),
        "cut.png": (truncated_png(noise_png(64)), "cannot be read as an image"),
        "empty.jpg": (b"", "not an image"),
    }
    for name, (data, message) in cases.items():
        status, body = post(served.server, (name, data))
        assert status == 422 and message in body["detail"] and body["filename"] == name, (name, body)
        assert_up(served.server)
    assert post(served.server, ("ok.png", good))[0] == 200


def test_F3_a_decompression_bomb_is_refused_from_its_header_under_the_servers_pixel_limit(served: Served) -> None:
    reset_peak(served.server.pid)
    before = memory(served.server.pid)["VmRSS"]
    status, body = post(served.server, ("bomb.png", bomb(9000)))  # ~10 KB, 81 megapixels
    assert status == 422, body
    assert (
        f"9000x9000 pixels is 81.0 megapixels, over the limit of {MAX_PIXELS} pixels (the server's --max-pixels)"
        in body["detail"]
    )
    # 4 megapixels: under the 40 MP default, over this server's --max-pixels: the option reaches the decoder
    status, body = post(served.server, ("big.png", bomb(2000)))
    assert status == 422 and "4.0 megapixels, over the limit" in body["detail"], body
    assert memory(served.server.pid)["VmHWM"] - before < 200 * MB  # nothing was decoded (81 MP take ~2 GB)
    assert_up(served.server)


@pytest.mark.slow
def test_F3_uploads_over_the_byte_limits_get_413_however_they_are_sent(served: Served) -> None:
    server = served.server
    small = served.samples[0].read_bytes()
    cases = [  # (body, what the 413 says); all sent chunked: no Content-Length to trust
        (multipart([("big.png", noise_png(900))]), "over the limit of 2 MB per file"),  # 2.4 MB, one file
        (multipart([(f"{i}.png", noise_png(700, i)) for i in range(3)]), "over the limit of 4 MB"),  # 3 x 1.5 MB
        (multipart([(f"{i}.png", small) for i in range(5)]), "more than 4 files"),
    ]
    with server.client() as client:
        for body, message in cases:
            response = client.post("/predict", content=chunks(body), headers={"Content-Type": MULTIPART})
            assert response.status_code == 413 and message in response.json()["detail"], response.text
            assert_up(server)
    # a Content-Length over the limit is refused before the body is read
    answer = raw_request(
        server,
        f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {500 * MB}\r\n\r\n".encode(),
        b"x" * 1000,
    )
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 4 MB" in answer, answer[:300]
    # a lying Content-Length: 100 bytes declared, 3 MB sent; only 100 bytes are read as this request's body
    body = multipart([("big.png", noise_png(1000))])
    answer = raw_request(
        server,
        f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: {MULTIPART}\r\nContent-Length: 100\r\n\r\n".encode(),
        body,
    )
    assert answer.startswith(b"HTTP/1.1 400") and b"the upload ended after 100 bytes" in answer, answer[:300]
    assert_up(server)


def test_F3_uploads_are_decoded_in_memory_never_written_to_disk(served: Served) -> None:
    # the server runs under RLIMIT_FSIZE=0: a file it wrote (Starlette's UploadFile spools anything over
    # 1 MB to a temporary file) would fail with EFBIG and the request with it
    limits = Path(f"/proc/{served.server.pid}/limits").read_text()
    assert [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max file size")] == [["0", "0"]]
    data = noise_png(700)
    assert 1.2 * MB < len(data) < 2 * MB
    status, body = post(served.server, ("noise.png", data))
    assert status == 200 and len(body["predictions"]) == 3, body


def test_F3_the_client_file_name_is_never_used_as_a_path(served: Served) -> None:
    # run from root/a/b, the server would find root/etc/passwd.png (not an image) under this name
    name, html = "../../etc/passwd.png", "<img src=x onerror=alert(1)>.png"
    sample = served.samples[0].read_bytes()
    status, body = post(served.server, (name, sample), (html, sample))
    assert status == 200, body
    first, second = body["results"]
    assert first["filename"] == name and by_class(first) == pytest.approx(served.expected[0], abs=1e-6)
    assert second["filename"] == html  # echoed as JSON data; the page shows it as text (test_browser.py)
    assert (served.root / "etc" / "passwd.png").read_bytes() == DECOY
    status, body = post(served.server, (name, b"junk"))
    assert status == 422 and "file 1: " not in body["detail"] and "passwd" not in body["detail"]


def test_F3_the_server_listens_on_127_0_0_1_by_default(served: Served) -> None:
    assert serve_cli.parse_args(["--experiment", "x"]).host == "127.0.0.1"
    # the module's server was started without --host: its socket is bound to the loopback address only
    assert served.server.host == "127.0.0.1"
    assert listening_addresses(served.server.port) == {"127.0.0.1"}


# --- I2: concurrent clients -----------------------------------------------------------------------------------------


def test_I2_concurrent_clients_get_answers_while_malformed_uploads_get_4xx_and_memory_stays_bounded(
    served: Served,
) -> None:
    server, clients, seconds = served.server, 8, 4.0
    samples = [(p.name, p.read_bytes()) for p in served.samples]
    tops = [max(e, key=e.get) for e in served.expected]
    for _ in range(3):  # warm up: the first forward passes allocate what later ones reuse
        assert post(server, *samples)[0] == 200
    reset_peak(server.pid)
    before = memory(server.pid)
    errors: list[str] = []
    answered, refused = Counter(), Counter()
    stop_at = time.monotonic() + seconds

    def client(number: int) -> None:
        with server.client() as http:
            i = number
            while time.monotonic() < stop_at:
                picks = [i % 3] if i % 4 else [i % 3, (i + 1) % 3]  # every 4th request carries two images
                try:
                    response = http.post("/predict", files=[("file", samples[k]) for k in picks])
                    body = response.json()
                    results = body["results"] if len(picks) > 1 else [body]
                    got = [r["predictions"][0]["class"] for r in results]
                    if response.status_code != 200 or got != [tops[k] for k in picks]:
                        errors.append(f"{response.status_code} {body}")
                    answered[number] += 1
                except Exception as exc:  # noqa: BLE001  any failure of a good request is an error of the test
                    errors.append(f"{type(exc).__name__}: {exc}")
                i += 1

    malformed = [
        ({"files": [("file", ("junk.png", b"\x89PNG\r\n\x1a\n" + bytes(500)))]}, 422),
        ({"files": [("file", ("cut.png", truncated_png(noise_png(64))))]}, 422),
        ({"files": [("file", ("bomb.png", bomb(9000)))]}, 422),
        ({"content": chunks(multipart([("big.png", noise_png(900))])), "headers": {"Content-Type": MULTIPART}}, 413),
        ({"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 400),
        ({"data": {"not": "a file"}}, 415),
    ]

    def attacker() -> None:
        with server.client() as http:
            i = 0
            while time.monotonic() < stop_at:
                kwargs, status = malformed[i % len(malformed)]
                if "content" in kwargs and not isinstance(kwargs["content"], bytes):
                    kwargs = {**kwargs, "content": chunks(multipart([("big.png", noise_png(900))]))}
                try:
                    response = http.post("/predict", **kwargs)
                    if response.status_code != status or not response.json().get("detail"):
                        errors.append(f"malformed {i % len(malformed)}: {response.status_code} {response.text[:200]}")
                    refused[response.status_code] += 1
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"malformed {i % len(malformed)}: {type(exc).__name__}: {exc}")
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)] + [threading.Thread(target=attacker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    after = memory(server.pid)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == [], errors[:5]
    assert len(answered) == clients and sum(answered.values()) >= clients, answered
    assert sum(refused.values()) >= len(malformed), refused
    assert_up(server)
    grown = (after["VmHWM"] - before["VmRSS"]) / MB
    print(
        f"I2: {sum(answered.values())} good requests from {clients} clients in {seconds:g} s, malformed refused "
        f"{dict(refused)}; server RSS {before['VmRSS'] / MB:.0f} MB -> {after['VmRSS'] / MB:.0f} MB, peak "
        f"{after['VmHWM'] / MB:.0f} MB"
    )
    assert grown < 150, f"the server's peak memory grew by {grown:.0f} MB under load ({before} -> {after})"


# --- the model failing (the app in this process, on uvicorn in a thread) --------------------------------------------------------------------------------


class Flaky:
    """A predictor whose forward pass fails while ``failing`` is set (the rest is the real one)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.failing = predictor, True

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)

    def probabilities(self, images):
        if self.failing:
            raise RuntimeError("injected failure of the forward pass")
        return self.predictor.probabilities(images)


def test_a_failing_model_answers_500_with_a_message_and_the_next_request_works(served: Served) -> None:
    flaky = Flaky(Predictor.load(served.model, device="cpu"))
    card = model_card(flaky, served.model)
    sample = ("circle.png", served.samples[0].read_bytes())
    with serve_in_thread(create_app(ModelWorker(flaky), card, Settings())) as url, httpx.Client(base_url=url) as client:
        response = client.post("/predict", files=[("file", sample)])
        assert response.status_code == 500
        assert "injected failure of the forward pass" in response.json()["detail"]
        flaky.failing = False
        response = client.post("/predict", files=[("file", sample)])
        assert response.status_code == 200 and by_class(response.json()) == pytest.approx(served.expected[0], abs=1e-6)


def test_the_cli_names_the_experiments_there_are_when_one_is_missing(trained_tiny, capsys) -> None:
    experiments = trained_tiny[1].parent
    assert serve_cli.main(["--experiment", "nope", "--experiments", str(experiments)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "experiments with a best.pt" in err and "tiny" in err
