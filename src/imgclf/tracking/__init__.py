"""Where a training run's record goes besides ``metrics.jsonl`` (imgclf's own, always written): the ``logger``
config group's classes. TensorBoard is written by the run log itself; the others follow :class:`Tracker`."""

from imgclf.tracking.base import RunInfo, TensorBoardLogger, Tracker, TrackingError
from imgclf.tracking.csv_logger import CsvLogger
from imgclf.tracking.mlflow_logger import MlflowLogger

__all__ = ["CsvLogger", "MlflowLogger", "RunInfo", "TensorBoardLogger", "Tracker", "TrackingError"]
