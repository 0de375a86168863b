"""Classify images with a trained experiment: python predict.py PATH... --experiment NAME [--output out.csv].

No Hydra here: it starts about as fast as `import torch, torchvision`. See imgclf/predict.py for the options.
"""

import sys

from imgclf.predict import main

if __name__ == "__main__":
    sys.exit(main())
