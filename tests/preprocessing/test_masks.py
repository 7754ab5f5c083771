"""Mask image files -> 0/1 masks: every depth a dataset ships, the same array from each."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from mammoray.synthetic.common import write_mask_png
from preprocessing.dicom_io import RejectedImage
from preprocessing.masks import decode_png_mask

pytestmark = pytest.mark.unit


def truth(h=37, w=53):
    """Two blobs and a lone pixel at the far corner (odd sizes: bit rows are padded)."""
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (12, 10), 6, 1, -1)
    cv2.rectangle(mask, (30, 20), (45, 30), 1, -1)
    mask[h - 1, w - 1] = 1
    return mask


def encodings(mask, tmp_path):
    one_bit = tmp_path / "mask.png"
    write_mask_png(str(one_bit), mask)  # what the generator writes beside its DICOMs
    yield "1-bit", one_bit.read_bytes()
    yield "8-bit 0/200", cv2.imencode(".png", mask * 200)[1].tobytes()
    yield "16-bit 0/1", cv2.imencode(".png", mask.astype(np.uint16))[1].tobytes()
    yield "RGB red", cv2.imencode(".png", np.dstack([0 * mask, 0 * mask, 255 * mask]))[1].tobytes()


def test_every_depth_gives_the_same_0_1_mask(tmp_path):
    mask = truth()
    one_bit = next(encodings(mask, tmp_path))[1]
    assert Image.open(io.BytesIO(one_bit)).mode == "1"  # really one bit per pixel
    for name, data in encodings(mask, tmp_path):
        out = decode_png_mask(data, mask.shape)
        assert out.dtype == np.uint8, name
        np.testing.assert_array_equal(out, mask, err_msg=name)


def test_bad_mask_files_are_named(tmp_path):
    mask = truth()
    one_bit = next(encodings(mask, tmp_path))[1]
    with pytest.raises(RejectedImage, match="mask size 37 x 53 does not match the image size "
                                            "40 x 53"):
        decode_png_mask(one_bit, (40, 53))
    with pytest.raises(RejectedImage, match="mask file is not a readable image"):
        decode_png_mask(b"not a png at all" * 10, mask.shape)
    with pytest.raises(RejectedImage, match="mask file is not a readable image"):
        decode_png_mask(one_bit[: len(one_bit) // 2], mask.shape)
