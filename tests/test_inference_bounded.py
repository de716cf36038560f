"""Window batches and the bounded-memory sliding window (seg_template/inference/slide.py).

The reference is today's stitching written out plainly (pad the image, add every window's logits, divide by
the overlap count; flip = the same on the mirrored image); the bounded mode must give its argmax bit for bit
and its logits to 1e-5, for every geometry: sizes that are not a multiple of the stride, images smaller than
the window, one window, several images, window batches that split a row of windows or an image's windows.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.inference import (
    InferenceModel,
    predict,
    predict_labels,
    predict_slide,
    predict_slide_labels,
    slide_bands,
    window_starts,
)
from seg_template.inference.windows import Window, crop_window
from seg_template.paths import PROJECT_ROOT
from tests.helpers import run_script


class Stride4Net(nn.Module):
    """Logits at stride 4 with a receptive field past the window, so padding and window placement matter."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.AvgPool2d(4),
                                  nn.Conv2d(8, num_classes, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def reference_slide(net: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int],
                    flip: bool = False) -> Tensor:
    """Today's stitch-everything slide, one window of all images at a time: ``[N, 3, H, W] -> [N, C, H, W]``."""
    if flip:
        return (reference_slide(net, images, crop, stride) + reference_slide(net, images.flip(-1), crop,
                                                                              stride).flip(-1)) / 2
    (ch, cw), (sh, sw), (h, w) = crop, stride, images.shape[-2:]
    padded = F.pad(images, (0, max(cw - w, 0), 0, max(ch - h, 0)))
    ph, pw = padded.shape[-2:]
    total, count = None, torch.zeros(ph, pw)
    for y in window_starts(ph, ch, sh):
        for x in window_starts(pw, cw, sw):
            logits = F.interpolate(net(padded[:, :, y:y + ch, x:x + cw]), size=(ch, cw), mode="bilinear")
            total = logits.new_zeros((*logits.shape[:2], ph, pw)) if total is None else total
            total[:, :, y:y + ch, x:x + cw] += logits
            count[y:y + ch, x:x + cw] += 1
    return (total / count)[:, :, :h, :w]


# (image height, width, crop, stride): odd sizes, smaller than the window in one or both directions, exactly
# one window, a tall strip (many bands), stride == crop (no overlap), 1-pixel-wide overlaps
GEOMETRIES = [
    (45, 61, (16, 24), (11, 13)),
    (13, 70, (16, 16), (8, 8)),
    (50, 9, (16, 16), (8, 12)),
    (10, 12, (16, 16), (16, 16)),
    (16, 24, (16, 24), (8, 8)),
    (97, 20, (12, 20), (5, 7)),
    (32, 48, (16, 16), (16, 16)),
    (33, 33, (16, 16), (15, 15)),
]


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return Stride4Net().eval()


def _images(n: int, h: int, w: int) -> Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


@pytest.mark.parametrize(("h", "w", "crop", "stride"), GEOMETRIES)
@pytest.mark.parametrize("flip", [False, True])
def test_stitching_matches_todays_reference(net, h, w, crop, stride, flip) -> None:
    images = _images(2, h, w)
    with torch.no_grad():
        want = reference_slide(net, images, crop, stride, flip=flip)
        for window_batch in (1, 3, 8):
            got = predict_slide(net, images, crop, stride, flip=flip, window_batch=window_batch)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"window_batch={window_batch}")


@pytest.mark.parametrize(("h", "w", "crop", "stride"), GEOMETRIES)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("window_batch", [1, 3])
def test_bounded_equals_stitching(net, h, w, crop, stride, flip, window_batch) -> None:
    images = _images(2, h, w)
    kwargs = {"flip": flip, "window_batch": window_batch}
    with torch.no_grad():
        stitched = predict_slide(net, images, crop, stride, **kwargs)
        labels = predict_slide_labels(net, images, crop, stride, **kwargs)
        bands = list(slide_bands(net, images, crop, stride, **kwargs))
    assert labels.shape == (2, h, w) and labels.dtype == torch.int64
    assert torch.equal(labels, stitched.argmax(1))  # bit for bit
    # the bands follow each other from row 0 to row h, none taller than a window
    tops = [top for top, _ in bands]
    heights = [band.shape[2] for _, band in bands]
    assert tops == [sum(heights[:i]) for i in range(len(bands))] and sum(heights) == h
    assert max(heights) <= crop[0]
    torch.testing.assert_close(torch.cat([band for _, band in bands], dim=2), stitched, rtol=0, atol=1e-5)


def test_tall_images_are_finished_band_by_band(net) -> None:
    """A strip 12 windows tall is handed on in several bands, each after its row of windows."""
    images = _images(1, 200, 30)
    with torch.no_grad():
        bands = list(slide_bands(net, images, (16, 16), (16, 16)))
    assert len(bands) == len(window_starts(200, 16, 16)) and all(b.shape[2] <= 16 for _, b in bands)


def test_window_batches_give_the_same_labels_as_one_window_at_a_time(net) -> None:
    images = _images(3, 37, 53)
    with torch.no_grad():
        one = predict_slide(net, images, (16, 16), (10, 10), window_batch=1)
        for window_batch in (2, 5, 64):  # splits the 3 images of a window; all windows of all images at once
            many = predict_slide(net, images, (16, 16), (10, 10), window_batch=window_batch)
            torch.testing.assert_close(many, one, rtol=0, atol=1e-5)
            assert torch.equal(predict_slide_labels(net, images, (16, 16), (10, 10), window_batch=window_batch),
                               one.argmax(1))


def test_window_batch_sets_the_forward_batch(net) -> None:
    seen: list[int] = []
    counting = nn.Sequential(net)
    counting.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    images = _images(2, 32, 40)  # 3 x 3 windows of 16 x 16, 2 images: 18 crops
    with torch.no_grad():
        predict_slide_labels(counting, images, (16, 16), (8, 12), window_batch=5)
    assert seen == [5, 5, 5, 3]


def test_mirrored_crops_are_cut_from_the_image() -> None:
    images = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    mirror = F.pad(images.flip(-1), (0, 3, 0, 3))  # the mirror, zero-padded at its bottom/right
    for y, x in ((0, 0), (0, 3), (2, 6), (4, 5), (3, 4)):  # windows inside, and passing, the image
        want = mirror[:, :, y:y + 4, x:x + 4]
        assert torch.equal(crop_window(images, Window(1, y, x), (4, 4)), want), (y, x)


def test_uint8_labels_and_too_many_classes(net) -> None:
    images = _images(1, 20, 20)
    with torch.no_grad():
        labels = predict_slide_labels(net, images, (16, 16), (8, 8), dtype=torch.uint8)
        assert labels.dtype == torch.uint8
        assert torch.equal(labels.long(), predict_slide(net, images, (16, 16), (8, 8)).argmax(1))
        with pytest.raises(ValueError, match="300 classes"):
            predict_slide_labels(Stride4Net(300).eval(), images, (16, 16), (8, 8), dtype=torch.uint8)


def test_inference_model_labels_in_every_mode(net) -> None:
    images = _images(2, 30, 41)
    settings = {"crop_size": [16, 16], "stride": [10, 12], "flip": True, "window_batch": 2}
    with torch.no_grad():
        stitched = InferenceModel(net, mode="slide", **settings)
        bounded = InferenceModel(net, mode="slide", bounded=True, **settings)
        want = stitched(images).argmax(1)
        assert stitched.returns_logits and not bounded.returns_logits
        assert torch.equal(bounded.predict_labels(images), want)
        assert torch.equal(stitched.predict_labels(images), want)
        whole = InferenceModel(net, scales=[0.75, 1.0], flip=True)
        assert torch.equal(whole.predict_labels(images, dtype=torch.uint8).long(), whole(images).argmax(1))
        assert torch.equal(predict_labels(net, images, "slide", bounded=True, **settings), want)
        with pytest.raises(ConfigError, match="bounded=false"):
            bounded(images)  # no image-size logits in bounded mode


def test_multiscale_slide_still_stitches(net) -> None:
    images = _images(1, 40, 48)
    with torch.no_grad():
        logits = predict(net, images, mode="slide", crop_size=(16, 16), stride=(12, 12), scales=[0.5, 1.25],
                         flip=True, window_batch=3)
    assert logits.shape == (1, 5, 40, 48) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("settings", "match"), [
    ({"mode": "whole", "bounded": True}, "needs inference.mode=slide"),
    ({"scales": [0.5, 1.0], "bounded": True}, r"scales must be \[1.0\]"),
    ({"window_batch": 0}, "window_batch"),
    ({"window_batch": 1.5}, "window_batch"),
    ({"crop_size": [16], "stride": [8, 8]}, r"\[h, w\]"),
    ({"crop_size": [16, 16], "stride": [8, 32]}, "stride <= inference.crop_size"),
    ({"scales": [0.0]}, "scales"),
])
def test_bad_settings_are_config_errors_naming_the_key(net, settings, match) -> None:
    settings = {"mode": "slide", "crop_size": [16, 16], "stride": [8, 8], **settings}
    with pytest.raises(ConfigError, match=match):
        InferenceModel(net, **settings)


# ----------------------------------------------------------------- scripts/bench_inference.py
def _bench():
    sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
    import bench_inference

    return bench_inference


def test_bench_prints_its_table(monkeypatch, capsys) -> None:
    """The table, with every variant run in this process (the script spawns one process per variant)."""
    bench = _bench()
    monkeypatch.setattr(bench, "measure", bench.run_variant)
    argv = ["--size", "48", "--crop", "32", "32", "--stride", "24", "24", "--window-batches", "1", "3",
            "--threads", str(torch.get_num_threads())]
    rows = bench.main(argv)
    out = capsys.readouterr().out
    assert [(r["mode"], r["window_batch"]) for r in rows] == [("stitch", 1), ("stitch", 3), ("bounded", 1),
                                                              ("bounded", 3)]
    assert all(r["agree"] == 1.0 and r["peak"] >= r["before"] > 0 for r in rows)
    assert "stitch (today)" in out and "window-batch speed-up of bounded over window_batch=1: 3:" in out
    with pytest.raises(SystemExit):
        bench.main(["--classes", "300"])


@pytest.mark.slow
def test_bench_script_runs_each_variant_in_its_own_process() -> None:
    result = run_script("scripts/bench_inference.py", "--size", "256", "--crop", "64", "64", "--stride", "48",
                        "48", "--threads", "1", "--window-batches", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    assert table[1].split()[:3] == ["variant", "window_batch", "time"]
    assert [line.split()[0] for line in table[2:4]] == ["stitch", "bounded"]
    assert table[3].rstrip().endswith("100.000%")  # same window batches: the same labels
