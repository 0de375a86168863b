"""An answer of "not sure": thresholds chosen on val (abstain.*), stored in the checkpoint and the export, applied by
predict and serve, reported by test.py; the energy and kNN scores for images of classes the model never saw."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import imgclf.tasks as tasks
from helpers import compose_cfg, copy_trained, tiny_overrides
from imgclf.abstain import CONFIDENCE, OOD, Abstain, energy_score, reasons
from imgclf.cli import predict as predict_cli
from imgclf.data.splits_file import read_splits
from imgclf.errors import CheckpointError, ConfigError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.inference import Predictor
from imgclf.models.classifier import Classifier, with_tta
from imgclf.models.ood_tap import BANK_KEY, OodTap, feature_module, knn_similarity
from imgclf.reporting.selective import choose_threshold, measure, ood_threshold
from imgclf.tasks.not_sure import bank_sample

# --- choosing the thresholds (synthetic val sets) -------------------------------------------------------------------


def _val(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Confidences, and correctness that grows likelier with them (as a calibrated model's does)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.2, 1.0, n).round(3)  # rounded: ties, which a threshold takes all or none of
    return confidence, rng.uniform(size=n) < confidence


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_the_precision_threshold_is_the_lowest_that_keeps_the_precision_on_val(target: float) -> None:
    confidence, correct = _val()
    choice = choose_threshold(confidence, correct, "precision", target, min_answered=20)
    answered = confidence >= choice.threshold
    assert correct[answered].mean() >= target and answered.sum() >= 20
    assert choice.answered == answered.sum() and choice.precision == pytest.approx(correct[answered].mean())
    for lower in np.unique(confidence[confidence < choice.threshold]):  # every lower threshold misses the goal
        more = confidence >= lower
        assert correct[more].mean() < target or more.sum() < 20


def test_the_coverage_threshold_answers_the_share_asked_for_and_no_lower_one_is_needed() -> None:
    confidence, correct = _val(1)
    choice = choose_threshold(confidence, correct, "coverage", 0.7)
    assert (confidence >= choice.threshold).mean() >= 0.7
    higher = np.unique(confidence[confidence > choice.threshold])
    assert higher.size == 0 or (confidence >= higher[0]).mean() < 0.7


def test_an_unreachable_precision_is_reported_and_no_threshold_chosen() -> None:
    confidence, correct = _val(2, n=30)
    choice = choose_threshold(confidence, correct, "precision", 0.95, min_answered=40)  # more than val has
    assert choice.threshold is None and "at least 40" in choice.reason and "abstain.target" in choice.reason
    choice = choose_threshold(confidence, np.zeros(30, bool), "precision", 0.95, min_answered=1)  # always wrong
    assert choice.threshold is None and "best such precision is 0.000" in choice.reason


def test_measure_gives_coverage_precision_and_an_interval_around_it() -> None:
    confidence, correct = _val(3)
    answered = confidence >= 0.7
    record = measure(answered, correct, resamples=500)
    assert record["coverage"] == pytest.approx(answered.mean())
    assert record["precision"] == pytest.approx(correct[answered].mean())
    low, high = record["precision_ci"]
    assert low < record["precision"] < high and high - low < 0.2


# --- the energy score -----------------------------------------------------------------------------------------------


def test_energy_is_the_tempered_logsumexp_and_separates_what_max_softmax_cannot() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 5))
    expected = 2.0 * np.log(np.exp(logits / 2.0).sum(1))
    np.testing.assert_allclose(energy_score(logits, 2.0), expected, rtol=1e-12)
    # images of unseen classes: the same logits, all lower by the same amount; a softmax cannot tell them apart
    unseen = logits - 8.0
    known = np.r_[np.ones(200), np.zeros(200)]
    msp = np.r_[_softmax(logits).max(1), _softmax(unseen).max(1)]
    energy = np.r_[energy_score(logits), energy_score(unseen)]
    assert roc_auc_score(known, msp) == pytest.approx(0.5, abs=1e-3)  # float rounding of equal values
    assert roc_auc_score(known, energy) > 0.95
    cut = ood_threshold(energy_score(logits), keep=0.9)
    assert (energy_score(logits) >= cut).mean() == pytest.approx(0.9, abs=0.005)
    record = Abstain(ood="energy", ood_keep=0.9, ood_threshold=cut)
    whys = reasons(_softmax(unseen).max(1), energy_score(unseen), record)
    assert sum(w == OOD for w in whys) > 150


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_energy_tap_reads_the_network_logits_inside_the_flip_wrapper() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    model = Classifier(net, [0.5] * 3, [0.25] * 3).eval()
    images = torch.randint(0, 255, (5, 3, 4, 4), dtype=torch.uint8)
    flip = with_tta(model, "flip")
    with torch.no_grad(), OodTap(flip, "energy", temperature=1.5) as tap:
        flip(images[:2])
        flip(images[2:])
        got = tap.scores()
    with torch.no_grad():
        views = [1.5 * torch.logsumexp(model(x) / 1.5, 1) for x in (images, images.flip(-1))]
    torch.testing.assert_close(got, (views[0] + views[1]) / 2)
    with torch.no_grad():  # the wrapper's own output is log-probabilities: no energy in it
        assert torch.logsumexp(flip(images), 1).abs().max() < 1e-5


class _Headed(torch.nn.Module):
    """A network with a ``head``: its input (a feature map here) is what the kNN score compares."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_the_knn_tap_scores_the_mean_features_of_both_views_against_the_bank() -> None:
    torch.manual_seed(0)
    model = Classifier(_Headed(), [0.5] * 3, [0.25] * 3).eval()
    assert feature_module(model) is model.net.head
    images = torch.randint(0, 255, (5, 3, 8, 8), dtype=torch.uint8)
    bank = torch.nn.functional.normalize(torch.randn(7, 6), dim=1).half()
    flip = with_tta(model, "flip")
    with torch.no_grad(), OodTap(flip, "knn", bank=bank, k=3) as tap:
        flip(images[:2])
        flip(images[2:])
        got = tap.scores()
    with torch.no_grad():  # by hand: the head's input averaged over positions, then over the image and its mirror
        views = [model.net.body(model.normalize(x)).mean((2, 3)) for x in (images, images.flip(-1))]
    mean = ((views[0] + views[1]) / 2).numpy()
    cosine = (mean / np.linalg.norm(mean, axis=1, keepdims=True)) @ bank.float().numpy().T
    np.testing.assert_allclose(got.numpy(), np.sort(cosine, axis=1)[:, -3], atol=1e-5)
    np.testing.assert_allclose(knn_similarity(torch.as_tensor(mean), bank, 99).numpy(), cosine.min(1), atol=1e-5)


def test_a_network_without_a_head_is_read_at_its_last_linear_layer_and_a_foreign_bank_is_refused() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    model = Classifier(net, [0.5] * 3, [0.25] * 3).eval()
    assert feature_module(model) is net[3]
    images = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    with torch.no_grad(), OodTap(model, "features") as tap:
        model(images)
    assert tap.scores().shape == (2, 5)
    with torch.no_grad(), OodTap(model, "knn", bank=torch.ones(4, 9), k=1) as tap:
        model(images)
        with pytest.raises(ValueError, match="holds 9 values per training image but this model's features have 5"):
            tap.scores()


# --- the config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["abstain.goal=precision"], "calibrate=true"),
        (["abstain.ood=energy"], "calibrate=true"),
        (["calibrate=true", "abstain.goal=recall"], "abstain.goal='recall'"),
        (["calibrate=true", "abstain.goal=precision", "abstain.target=1.5"], "abstain.target=1.5"),
        (["abstain.ood=knn"], "calibrate=true"),
        (["calibrate=true", "abstain.ood=knn", "abstain.ood_k=0"], "abstain.ood_k=0"),
        (["calibrate=true", "abstain.ood=knn", "abstain.ood_k=30", "abstain.ood_bank=20"], "make ood_bank larger"),
        (["calibrate=true", "abstain.ood=mahalanobis"], "abstain.ood='mahalanobis'"),
    ],
)
def test_the_config_check_refuses_what_cannot_work(tmp_path, tiny_folder, overrides: list[str], said: str) -> None:
    from imgclf.tasks.config_check import check_config

    with pytest.raises(ConfigError, match=re.escape(said)):
        check_config(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *overrides)))


# --- end to end: a tiny model given thresholds by test.py calibrate=true -----------------------------------------------


BANK = 20  # abstain.ood_bank of the kNN runs: fewer than the tiny folder's train images, so a sample is drawn


@pytest.fixture(scope="module", params=["energy", "knn"])
def unsure(request, trained_tiny, tmp_path_factory) -> dict:
    """The session's tiny experiment, calibrated with abstain.goal=coverage 0.5 (half of val answered: the test
    split then has answered and unanswered images, whatever the tiny model learnt) and abstain.ood=energy or knn."""
    tmp = tmp_path_factory.mktemp("not_sure")
    overrides, exp = copy_trained(
        trained_tiny,
        tmp,
        "calibrate=true",
        "abstain.goal=coverage",
        "abstain.target=0.5",
        f"abstain.ood={request.param}",
        "abstain.ood_keep=0.9",
        "abstain.ood_k=3",
        f"abstain.ood_bank={BANK}",
        "report.bootstrap=200",
    )
    metrics = tasks.test(compose_cfg("train", overrides))
    return {"overrides": overrides, "exp": exp, "metrics": metrics, "tmp": tmp, "ood": request.param}


def test_thresholds_are_stored_in_the_checkpoint_and_reported_by_test(unsure) -> None:
    stored = load_checkpoint(unsure["exp"] / "best.pt")["abstain"]
    record = Abstain.from_dict(stored)
    assert record.goal == "coverage" and record.threshold is not None and record.ood_threshold is not None
    assert record.val["coverage"] >= 0.5 and record.val["samples"] == 18
    assert record.ood == unsure["ood"] and (record.ood_k == 3) == (unsure["ood"] == "knn")
    assert Predictor.load(unsure["exp"] / "best.pt", device="cpu").abstain == record
    report = unsure["exp"] / "test"
    assert (report / "coverage_accuracy.png").stat().st_size > 5000
    section = json.loads((report / "metrics.json").read_text())["not_sure"]
    assert 0 < section["coverage"] < 1 and section["samples"] == 18
    assert section["precision_ci"][0] <= section["precision"] <= section["precision_ci"][1]
    text = (report / "report.md").read_text()
    assert "## Not sure" in text and f"not sure: answered {section['answered']} of 18" in text


def test_predict_answers_not_sure_below_the_threshold_and_a_class_above_it(unsure, tmp_path) -> None:
    record = Abstain.from_dict(load_checkpoint(unsure["exp"] / "best.pt")["abstain"])
    folder = str(Path(unsure["metrics"]["data_root"]) / "test")
    out = tmp_path / "p.json"
    code = predict_cli.main([folder, "--checkpoint", str(unsure["exp"] / "best.pt"), "--output", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["predictions"]
    unsure_rows = [r for r in rows if r["not_sure"]]
    sure_rows = [r for r in rows if not r["not_sure"]]
    assert unsure_rows and sure_rows
    for r in sure_rows:
        assert r["pred"] is not None and r["confidence"] >= record.threshold and r["ood_score"] >= record.ood_threshold
    for r in unsure_rows:
        assert r["pred"] is None and len(r["top_k"]) >= 2
        why = OOD if r["ood_score"] < record.ood_threshold else CONFIDENCE
        assert r["not_sure_reason"] == why
        assert why == OOD or r["confidence"] < record.threshold
    csv_out = tmp_path / "p.csv"
    predict_cli.main([folder, "--checkpoint", str(unsure["exp"] / "best.pt"), "--output", str(csv_out), "--no-abstain"])
    assert "not sure" not in csv_out.read_text()


def test_serve_answers_not_sure_with_the_top_guesses(unsure) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgclf.cli import serve as serve_cli
    from imgclf.cli.serve import settings_of
    from imgclf.serve.app import Settings, create_app
    from imgclf.serve.model import model_card
    from imgclf.serve.worker import ModelWorker

    path = unsure["exp"] / "best.pt"
    predictor = Predictor.load(path, device="cpu")
    files = sorted((Path(unsure["metrics"]["data_root"]) / "test").rglob("*.*"))
    app = create_app(ModelWorker(predictor), model_card(predictor, path), Settings())
    results = []
    with TestClient(app) as client:
        for start in range(0, len(files), 6):  # within the server's files per request
            chunk = files[start : start + 6]
            results += client.post("/predict", files=[("file", (f.name, f.read_bytes())) for f in chunk]).json()[
                "results"
            ]
        card = client.get("/card").json()
    assert card["abstain"]["threshold"] == predictor.abstain.threshold
    no = [r for r in results if r["not_sure"]]
    yes = [r for r in results if not r["not_sure"]]
    assert no and yes
    assert all(r["message"].startswith("not sure") and r["predictions"][0]["name"] in r["message"] for r in no)
    assert all(r["message"] is None and r["predictions"][0]["probability"] >= predictor.abstain.threshold for r in yes)

    # imgclf-serve --no-abstain: the same model always names a class
    settings = settings_of(serve_cli.parse_args(["--model", str(path), "--no-abstain"]))
    assert settings.abstain is False and settings_of(serve_cli.parse_args(["--model", str(path)])).abstain is True
    app = create_app(ModelWorker(predictor), model_card(predictor, path), settings)
    with TestClient(app) as client:
        unsure_files = [f for f, r in zip(files, results, strict=True) if r["not_sure"]][:6]
        again = client.post("/predict", files=[("file", (f.name, f.read_bytes())) for f in unsure_files]).json()
        assert client.get("/card").json()["abstain"] is None
    again = again["results"]
    assert again and not any(r["not_sure"] for r in again)


def test_an_unreachable_goal_stores_no_threshold_and_predict_always_answers(trained_tiny, tmp_path, caplog) -> None:
    overrides, exp = copy_trained(
        trained_tiny, tmp_path, "calibrate=true", "abstain.goal=precision", "abstain.min_answered=100"
    )
    tasks.test(compose_cfg("train", overrides))
    record = Abstain.from_dict(load_checkpoint(exp / "best.pt")["abstain"])
    assert record.threshold is None and not record.active and "at least 100 of its 18 images" in record.reason
    assert "no confidence threshold stored" in caplog.text
    assert "No threshold was stored" in (exp / "test" / "report.md").read_text()


@pytest.mark.slow
def test_the_export_carries_the_thresholds_and_the_ood_score(unsure, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from imgclf.deploy.export import export
    from imgclf.deploy.onnx_predictor import OnnxPredictor

    exp = tmp_path / "exp"
    shutil.copytree(unsure["exp"], exp)
    result = export(exp / "best.pt", exp / "export")
    onnx = OnnxPredictor.load(result.model)
    torch_predictor = Predictor.load(exp / "best.pt", device="cpu")
    assert onnx.abstain == torch_predictor.abstain
    files = sorted((Path(unsure["metrics"]["data_root"]) / "test").rglob("*.*"))
    probs, energy = onnx.scores([onnx.load_image(f) for f in files])
    expected_probs, expected_energy = torch_predictor.scores([torch_predictor.load_image(f) for f in files])
    np.testing.assert_allclose(probs, expected_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(energy, expected_energy.numpy(), atol=1e-3)
    assert result.parity["ood_max_abs_diff"] <= 1e-3
    # TorchScript has no second output: its file computes the probabilities alone, as parity checks
    assert export(exp / "best.pt", exp / "ts", fmt="torchscript").parity["passed"]
    # an export made before the kNN score named its second output "energy": still read, to the same scores
    import onnx as onnx_lib

    graph = onnx_lib.load(str(result.model))
    for node in graph.graph.node:
        node.output[:] = ["energy" if name == "ood_score" else name for name in node.output]
    graph.graph.output[1].name = "energy"
    onnx_lib.save(graph, str(tmp_path / "legacy.onnx"))
    legacy = OnnxPredictor.load(tmp_path / "legacy.onnx")
    np.testing.assert_allclose(legacy.scores([legacy.load_image(f) for f in files])[1], energy, atol=1e-6)
    out = tmp_path / "onnx.json"
    predict_cli.main([str(f) for f in files] + ["--model", str(result.model), "--output", str(out)])
    ours = [r["not_sure"] for r in json.loads(out.read_text())["predictions"]]
    theirs = [w is not None for w in reasons(expected_probs.numpy().max(1), expected_energy.numpy(), onnx.abstain)]
    assert ours == theirs and any(ours) and not all(ours)


def test_the_knn_bank_is_a_seeded_sample_of_unit_length_training_features(unsure, trained_tiny) -> None:
    payload = load_checkpoint(unsure["exp"] / "best.pt")
    if unsure["ood"] == "energy":
        assert BANK_KEY not in payload
        return
    bank = payload[BANK_KEY]
    assert bank.dtype == torch.float16 and len(bank) == BANK
    np.testing.assert_allclose(bank.float().norm(dim=1).numpy(), 1.0, atol=1e-3)
    # the rows are the features of the seeded sample of train images, evaluated as predict evaluates them
    splits, _ = read_splits(unsure["exp"] / "splits.csv", payload["class_names"])
    assert len(splits.samples["train"]) > BANK
    sample = bank_sample(splits, BANK, payload["config"]["seed"]).samples["train"]
    predictor = Predictor.load(unsure["exp"] / "best.pt", device="cpu", tta=payload["abstain"]["tta"])
    assert torch.equal(predictor.ood_bank, bank)
    with torch.no_grad(), OodTap(predictor.model, "features") as tap:
        predictor.probabilities([predictor.load_image(path) for path, _ in sample])
    expected = torch.nn.functional.normalize(tap.scores(), dim=1)
    torch.testing.assert_close(bank.float(), expected, atol=2e-3, rtol=0)


def test_a_knn_threshold_without_its_bank_is_refused_by_name(unsure, tmp_path) -> None:
    if unsure["ood"] != "knn":
        pytest.skip("the energy score needs no bank")
    payload = load_checkpoint(unsure["exp"] / "best.pt")
    del payload[BANK_KEY]
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(CheckpointError, match=r"broken\.pt has a kNN .* no bank of training features"):
        Predictor.load(broken, device="cpu")
