"""One model thread fed through a bounded queue, and a small pool of decoding threads.

The event loop never runs the model or decodes an image: a request hands its uploaded bytes to the
decoding pool (Pillow releases the GIL), then puts the decoded images on the model's queue and waits.
The model thread takes what is queued, up to ``max_batch`` images from any number of requests, and runs
one forward pass, so concurrent clients are batched together instead of each starting its own pass
(torch already spreads one pass over every core). Memory stays bounded: the app admits a fixed number
of requests at a time (see ``app.py``), each with at most ``max_files`` images, and the queue holds no
more than that.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from imgclf.abstain import scored

log = logging.getLogger(__name__)


class Busy(Exception):
    """The model's queue is full: the client should retry later (HTTP 503)."""


class ModelFailure(Exception):
    """The forward pass failed (logged with its traceback); the requests in that batch get HTTP 500."""


class ModelWorker:
    """Runs ``predictor`` on one thread over batches gathered from a bounded queue.

    Args:
        predictor: a torch ``Predictor`` or an ``OnnxPredictor``.
        max_batch: most images per forward pass.
        queue_size: most images waiting for the model; more is refused as :class:`Busy`.
        decode_threads: images decoded at once (each may take up to ~24 bytes per pixel of ``max_pixels``).
    """

    def __init__(self, predictor: Any, *, max_batch: int = 16, queue_size: int = 256, decode_threads: int = 2) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[Any, Future] | None] = queue.Queue(queue_size)
        self._decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="imgclf-decode")
        self._thread = threading.Thread(target=self._run, name="imgclf-model", daemon=True)
        self.batches = 0  # forward passes run, and the images in them (for the logs and tests)
        self.images = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the model thread after what is queued, and the decoding pool."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        self._decoders.shutdown(wait=False, cancel_futures=True)

    async def decode(self, label: str, data: bytes) -> Any:
        """One upload as the image the model takes, decoded on the pool.

        Raises:
            DataError: not an image, truncated, or over the pixel limit (checked from the header first).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoders, lambda: self.predictor.load_image(label, data=data))

    async def classify(self, images: list[Any]) -> tuple[np.ndarray, list[float | None]]:
        """(len(images), C) probabilities and each image's OOD score (None unless the model has an OOD threshold,
        :mod:`imgclf.abstain`), computed by the model thread with whatever else is queued.

        Raises:
            Busy: the queue cannot take these images now.
            ModelFailure: the forward pass failed.
        """
        futures: list[Future] = []
        for image in images:
            future: Future = Future()
            try:
                self._queue.put_nowait((image, future))
            except queue.Full:
                for queued in futures:
                    queued.cancel()  # the model thread skips them
                raise Busy(f"the model's queue is full ({self._queue.maxsize} images waiting); retry shortly") from None
            futures.append(future)
        rows = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        if not rows:
            return np.zeros((0, len(self.predictor.classes)), np.float32), []
        return np.stack([probs for probs, _ in rows]), [ood for _, ood in rows]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:  # whatever else is waiting rides along: no waiting for more
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._forward([(image, f) for image, f in batch if f.set_running_or_notify_cancel()])

    def _forward(self, batch: list[tuple[Any, Future]]) -> None:
        if not batch:
            return
        try:
            probs, ood = scored(self.predictor, [image for image, _ in batch], getattr(self.predictor, "abstain", None))
        except Exception as exc:  # noqa: BLE001  any failure of the model fails its batch, never the server
            log.exception("the forward pass of %d image(s) failed", len(batch))
            for _, future in batch:
                future.set_exception(ModelFailure(f"the model failed on this batch ({type(exc).__name__}: {exc})"))
            return
        self.batches += 1
        self.images += len(batch)
        scores = [None] * len(batch) if ood is None else [float(e) for e in ood]
        for row, score, (_, future) in zip(probs, scores, batch, strict=True):
            future.set_result((row, score))
