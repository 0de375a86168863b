"""Classify images with a trained experiment: python predict.py PATH... --experiment NAME [--output out.csv].

No Hydra here: it starts about as fast as `import torch, torchvision`. See imgclf/predict.py for the options.
"""

from imgclf.cli.predict import run

if __name__ == "__main__":
    run()
