"""seg_template: a PyTorch Lightning + Hydra template for semantic segmentation."""

__version__ = "0.1.0"
