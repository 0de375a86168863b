"""Classify images with a trained experiment: python predict.py PATH... --experiment NAME [--output out.csv].

No Hydra here: it starts faster than `import torch, torchvision` (with an ONNX model, without torch at all).
The options: python predict.py --help, or src/imgclf/cli/predict.py.
"""

from imgclf.cli.predict import run

if __name__ == "__main__":
    run()
