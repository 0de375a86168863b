"""Finding images, reading them safely, splitting them and serving them as tensors."""
