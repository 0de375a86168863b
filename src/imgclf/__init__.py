"""imgclf: Hydra-configured experiments for image classification with PyTorch."""

__version__ = "0.1.0"
