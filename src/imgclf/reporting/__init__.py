"""Metrics (torchmetrics), statistics torchmetrics does not have, the test report and its figures."""
