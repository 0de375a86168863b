"""Errors a user can cause. Each message names the file, key or value and says what to do."""


class ImgclfError(Exception):
    """Base class: caught by the entry points and shown without a traceback."""


class ConfigError(ImgclfError):
    """A config key has a wrong type, an out-of-range value or an impossible combination."""


class DataError(ImgclfError):
    """A data folder, image or class list cannot be used."""


class CheckpointError(ImgclfError):
    """A checkpoint cannot be written, read or used with this config."""


class ReportError(ImgclfError):
    """A test report cannot be written (a full disk, an unwritable folder); the previous one is kept."""


class ExperimentError(ImgclfError):
    """The experiment directory is busy, finished or would be overwritten."""


class TrainingError(ImgclfError):
    """Training cannot go on: the loss diverged, memory ran out or a loader worker died."""
