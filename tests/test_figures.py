"""The report's and predict's figures read well: no spikes from near-empty calibration bins, and a compact
predict --plot page whose every label stays inside the picture (issue 28)."""

from __future__ import annotations

import numpy as np
import torch

from imgclf.reporting import figures, statistics


def _inside(fig) -> list[str]:
    """The texts of ``fig`` (titles, tick labels, bar labels) that reach outside the saved picture."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    outside = []
    for text in fig.findobj(lambda artist: hasattr(artist, "get_text") and hasattr(artist, "get_window_extent")):
        if not text.get_text() or not text.get_visible():
            continue
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1 or extent.y1 > box.y1 + 1:
            outside.append(text.get_text())
    return outside


def test_reliability_bins_of_one_image_draw_no_spike_and_show_their_uncertainty():
    # 60 confident right answers and one wrong answer alone in a low-confidence bin
    probs = torch.tensor([[0.95, 0.05]] * 60 + [[0.45, 0.55]])
    labels = torch.tensor([0] * 60 + [0])
    rel = statistics.reliability(probs, labels)
    fig = figures.reliability_figure(rel)
    top = fig.axes[0]
    joined = [line for line in top.get_lines() if line.get_linestyle() == "-"]
    assert joined == [], "no line may join the bins: a lone wrong image would draw a spike to 0"
    # the lone image's bin carries an interval that says how little it knows (Wilson 95% of 0/1: 0 to 0.79)
    low, high = figures._wilson(0, 1)
    assert low == 0 and high > 0.75
    segments = [seg for coll in top.collections if hasattr(coll, "get_segments") for seg in coll.get_segments()]
    spans = [abs(seg[1][1] - seg[0][1]) for seg in segments if len(seg) == 2]
    assert max(spans) > 0.75
    assert min(spans) < 0.15  # the bin of 60 images is tight
    figures._pyplot().close(fig)


def test_a_predict_plot_page_is_a_compact_grid_with_every_label_inside():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(12)]
    top = [[("a class name far longer than any panel could hold", 0.995), ("rose", 0.004), ("tulip", 0.001)]] * 12
    fig = figures.predictions_figure(images, top, [f"IMG_{i:04d}_from_the_camera_roll.jpg" for i in range(12)])
    width, height = fig.get_size_inches()
    assert width > height, "12 images are a grid of several columns, not one tall column"
    assert _inside(fig) == []
    figures._pyplot().close(fig)
