"""Test-time prediction: whole image, sliding window (stitched or in bounded memory), multi-scale + flip.

Every function takes normalised ``images[N, 3, H, W]``; the ``predict*`` functions return ``logits[N, C, H,
W]`` at the image size, the ``*_labels`` ones class ids ``[N, H, W]``. Maths only: no file loading.

- ``whole``: one forward pass and its upsampling (the building block);
- ``windows``: where the sliding windows go, their logits a batch of crops at a time;
- ``slide``: stitching them, or the bounded mode (band by band);
- ``model``: the ``inference.*`` settings applied to a network (``InferenceModel``).
"""

from seg_template.inference.model import InferenceModel, check_settings, predict, predict_labels
from seg_template.inference.slide import (
    DEFAULT_WINDOW_BATCH,
    predict_slide,
    predict_slide_labels,
    slide_bands,
)
from seg_template.inference.whole import class_ids, predict_whole
from seg_template.inference.windows import window_starts

__all__ = ["DEFAULT_WINDOW_BATCH", "InferenceModel", "check_settings", "class_ids", "predict", "predict_labels",
           "predict_slide", "predict_slide_labels", "predict_whole", "slide_bands", "window_starts"]
