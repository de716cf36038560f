"""``python train.py [overrides]``: train with the Hydra configs in configs/ (see seg_template/train.py)."""

from seg_template.train import main

if __name__ == "__main__":
    main()
