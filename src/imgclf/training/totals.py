"""What an epoch adds up as it goes: the loss and accuracy sums on the device (:class:`Totals`, kept in a
checkpoint when an epoch is interrupted) and the progress bar that shows them (:class:`Progress`)."""

from __future__ import annotations

import time

import torch

from imgclf.progress import progress
from imgclf.training.distributed import Distributed


class Totals:
    """Running loss and accuracy sums kept on the device."""

    def __init__(self, device: torch.device, state: dict[str, float] | None = None) -> None:
        state = state or {}
        self.loss_sum = torch.tensor(state.get("loss_sum", 0.0), device=device)
        self.correct = torch.tensor(state.get("correct", 0.0), device=device)
        self.seen = int(state.get("seen", 0))
        self.steps = int(state.get("steps", 0))
        self.skipped = int(state.get("skipped", 0))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss_sum += loss.detach() * n
        targets = labels.argmax(1) if labels.ndim == 2 else labels  # soft labels (MixUp/CutMix): the larger share
        self.correct += (logits.detach().argmax(1) == targets).sum()
        self.seen += n
        self.steps += 1

    def skip(self) -> None:
        """A batch consumed without training on it (its loss was not finite)."""
        self.steps += 1
        self.skipped += 1

    def state(self) -> dict[str, float]:
        """Plain values (one host sync), for checkpoints and logs."""
        return {
            "loss_sum": float(self.loss_sum),
            "correct": float(self.correct),
            "seen": self.seen,
            "steps": self.steps,
            "skipped": self.skipped,
        }

    def means(self) -> tuple[float, float]:
        seen = max(self.seen, 1)
        return float(self.loss_sum) / seen, float(self.correct) / seen

    def reduced(self, group: Distributed) -> Totals:
        """The totals of every rank together (the steps, equal on every rank, stay as they are)."""
        if not group.active:
            return self
        sums = group.sum(
            torch.stack(
                [
                    self.loss_sum.float(),
                    self.correct.float(),
                    torch.tensor(float(self.seen), device=self.loss_sum.device),
                ]
            )
        )
        loss_sum, correct, seen = sums.tolist()
        return Totals(self.loss_sum.device, {**self.state(), "loss_sum": loss_sum, "correct": correct, "seen": seen})

    @staticmethod
    def resumed(device: torch.device, partial: dict[str, float] | None, group: Distributed) -> Totals:
        """Totals of an epoch resumed midway: a checkpoint holds the sums of every rank, taken up by rank 0."""
        if partial and not group.is_main:
            partial = {**partial, "loss_sum": 0.0, "correct": 0.0, "seen": 0}
        return Totals(device, partial)


class Progress:
    """A tqdm bar whose loss/acc postfix is refreshed (and synced) at most once a second."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar = progress(total=total, initial=initial, desc=desc, unit="batch", enabled=enabled)
        self.enabled = enabled
        self.last = time.perf_counter()
        self.start = self.last

    def update(self, totals: Totals, seen_before: int) -> None:
        self.bar.update(1)
        now = time.perf_counter()
        if self.enabled and now - self.last >= 1.0:
            loss, acc = totals.means()
            rate = (totals.seen - seen_before) / (now - self.start)
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}", refresh=False)
            self.last = now

    def close(self) -> None:
        self.bar.close()
