"""Deploying a trained model: export to ONNX (or TorchScript) and a predictor that needs no torch."""
