"""New-best figures are drawn at most a tenth of the time, and the best epoch always has them."""

from __future__ import annotations

from imgclf.training.figure_throttle import FigureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_drawing_waits_nine_times_its_cost_and_the_newest_best_is_drawn_at_the_end() -> None:
    clock, drawn = Clock(), []

    def draw(epoch: int, outputs: object) -> None:
        drawn.append(epoch)
        clock.now += 3.0  # a drawing takes 3 s

    figures = FigureThrottle(draw, clock)  # type: ignore[arg-type]
    for epoch in range(1, 41):  # 40 epochs of 1 s, each a new best
        figures.new_best(epoch, object())  # type: ignore[arg-type]
        clock.now += 1.0
    figures.flush()
    assert drawn[0] == 1 and drawn[-1] == 40  # the first best at once, the last at the end
    gaps = [b - a for a, b in zip(drawn, drawn[1:-1], strict=False)]
    assert all(gap >= 27 for gap in gaps)  # 27 s of training between 3 s drawings: a tenth of the time
    assert 3.0 * len(drawn) <= 0.1 * 40 + 2 * 3.0


def test_epochs_slower_than_their_figures_get_every_one() -> None:
    clock, drawn = Clock(), []

    def draw(epoch: int, outputs: object) -> None:
        drawn.append(epoch)
        clock.now += 1.0

    figures = FigureThrottle(draw, clock)  # type: ignore[arg-type]
    for epoch in range(1, 6):
        figures.new_best(epoch, object())  # type: ignore[arg-type]
        clock.now += 10.0
    figures.flush()
    figures.flush()  # nothing pending: nothing drawn twice
    assert drawn == [1, 2, 3, 4, 5]
