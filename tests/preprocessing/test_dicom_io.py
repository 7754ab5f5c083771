"""read_dicom on real files written with pydicom / GDCM: exact values, every transfer syntax."""

import numpy as np
import pytest
from pydicom import uid

from mammoray.synthetic import dicom_write
from preprocessing.dicom_io import (
    RejectedImage,
    _check_image,
    _decode_encapsulated,
    _parse,
    _stored_pixels,
    read_dicom,
)

pytestmark = pytest.mark.unit


def ramp(h=48, w=40, bits=12):
    """A deterministic image using the whole stored range, min 0 and max 2**bits - 1."""
    values = np.linspace(0, (1 << bits) - 1, h * w).round().astype(np.uint16)
    return np.random.default_rng(0).permutation(values).reshape(h, w)


def stretch(values):
    """The exactly rounded linear stretch of [min, max] to [0, 65535]."""
    v = values.astype(np.float64)
    return np.rint((v - v.min()) * 65535.0 / (v.max() - v.min())).astype(np.uint16)


def assert_stretched(actual, stored):
    """The reader's contract: the linear stretch within 1 of 65535 (float32 arithmetic),
    with the minimum at exactly 0 and the maximum at exactly 65535."""
    expected = stretch(stored)
    assert actual.dtype == np.uint16 and actual.shape == stored.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1
    assert (actual[stored == stored.min()] == 0).all()
    assert (actual[stored == stored.max()] == 65535).all()


LOSSLESS = ["implicit-le", "explicit-le", "explicit-be", "deflated", "rle", "jpeg-lossless",
            "jpeg-lossless-sv1", "jpeg-ls", "jpeg2000-lossless"]


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_transfer_syntaxes_decode_exactly(syntax):
    stored = ramp()
    data = dicom_write.encode(dicom_write.image_dataset(stored, bits_stored=12), syntax)
    expected_ts = dicom_write.TRANSFER_SYNTAXES[syntax][0]
    assert expected_ts.encode() in data  # the file really is in that transfer syntax
    img = read_dicom(data)
    assert_stretched(img.pixels, stored)


@pytest.mark.parametrize("syntax,bits,tolerance", [
    ("jpeg-baseline", 8, 12 * 257), ("jpeg-extended", 12, 4 * 16),
    ("jpeg-ls-near", 12, 6 * 16), ("jpeg2000", 12, 200 * 16)])
def test_lossy_transfer_syntaxes_decode_close(syntax, bits, tolerance):
    # Smooth content, as lossy codecs are meant for. Error bound per codec, in output units
    # (stored units x 16 for 12 bits): the codec's error plus the shift of the image's own
    # min/max, which the stretch follows. A wrong decoder is off by thousands.
    yy, xx = np.mgrid[0:64, 0:48]
    stored = ((xx + yy) * ((1 << bits) - 1) / (63 + 47)).round()
    stored = stored.astype(np.uint8 if bits == 8 else np.uint16)
    data = dicom_write.encode(dicom_write.image_dataset(stored, bits_stored=bits), syntax)
    assert dicom_write.TRANSFER_SYNTAXES[syntax][0].encode() in data
    img = read_dicom(data)
    err = np.abs(img.pixels.astype(int) - stretch(stored).astype(int))
    assert err.max() <= tolerance


COMPRESSED = ["rle", "jpeg-lossless", "jpeg-lossless-sv1", "jpeg-ls", "jpeg2000-lossless",
              "jpeg-baseline", "jpeg-ls-near", "jpeg2000"]


@pytest.mark.parametrize("syntax", COMPRESSED)
def test_compressed_files_decode_in_one_pass_to_the_full_paths_values(syntax):
    # The one-pass path (header, then the fragments straight from the bytes) must give the
    # stored values of the full parse exactly, and the header facts the LUTs read.
    stored = ramp(bits=8).astype(np.uint8) if syntax == "jpeg-baseline" else ramp()
    ds = dicom_write.image_dataset(stored, bits_stored=8 if syntax == "jpeg-baseline" else 12,
                                   attributes={"ImageLaterality": "R", "WindowCenter": 2000,
                                               "WindowWidth": 3000})
    data = dicom_write.encode(ds, syntax)
    fast = _decode_encapsulated(data)
    assert fast is not None
    header, values = fast
    full = _parse(data)
    _check_image(full)
    np.testing.assert_array_equal(values, _stored_pixels(full, data))
    assert "PixelData" not in header  # the compressed bytes were never read into the header
    assert (header.ImageLaterality, header.WindowCenter, header.WindowWidth) == ("R", 2000, 3000)


@pytest.mark.parametrize("case", ["native", "truncated", "12-bit jpeg-extended", "multi-frame"])
def test_one_pass_path_leaves_everything_else_to_the_full_path(case):
    # None sends the file down the full path, which decodes it or names the problem as before.
    ds = dicom_write.image_dataset(ramp(), bits_stored=12)
    if case == "native":
        data = dicom_write.encode(ds, "explicit-le")
    elif case == "truncated":
        data = dicom_write.encode(ds, "rle")[:-300]
    elif case == "12-bit jpeg-extended":  # pydicom's plugins refuse it; GDCM decodes it
        data = dicom_write.encode(ds, "jpeg-extended")
    else:
        ds.NumberOfFrames = 2
        ds.PixelData = np.stack([ramp(), ramp()]).tobytes()
        data = dicom_write.encode(ds, "rle")
    assert _decode_encapsulated(data) is None


def test_monochrome1_is_inverted():
    stored = ramp()
    ds = dicom_write.image_dataset(stored, bits_stored=12, photometric="MONOCHROME1")
    img = read_dicom(dicom_write.encode(ds, "explicit-le"))
    assert_stretched(65535 - img.pixels, stored)
    assert img.pixels[stored == 0].item() == 65535


def test_bits_stored_ignores_garbage_in_high_bits():
    stored = ramp(bits=12)
    raw = stored | np.uint16(0xA000)  # overlay bits above BitsStored
    ds = dicom_write.image_dataset(raw, bits_stored=12)
    img = read_dicom(dicom_write.encode(ds, "explicit-le"))
    assert_stretched(img.pixels, stored)


def test_signed_pixels_and_rescale():
    stored = np.array([[-100, 0], [50, 300]] * 8, dtype=np.int16).repeat(8, axis=1)
    ds = dicom_write.image_dataset(stored, bits_stored=16,
                                   attributes={"RescaleSlope": 2, "RescaleIntercept": 7})
    img = read_dicom(dicom_write.encode(ds, "explicit-le"))
    # Modality LUT is affine with positive slope: order is kept; -100 -> 0, 300 -> 65535.
    assert img.pixels[0, 0] == 0 and img.pixels[1, 8] == 65535
    # 0 -> 7, 50 -> 107 on a [-193, 607] range.
    assert abs(int(img.pixels[0, 8]) - round((7 + 193) * 65535 / 800)) <= 1
    assert abs(int(img.pixels[1, 0]) - round((107 + 193) * 65535 / 800)) <= 1


def test_voi_window_linear_is_applied_and_optional():
    stored = np.tile(np.array([0, 1000, 1400, 2000, 2600, 4095], np.uint16), (16, 3))
    ds = dicom_write.image_dataset(stored, bits_stored=12, attributes={
        "WindowCenter": 2000, "WindowWidth": 1001})
    data = dicom_write.encode(ds, "explicit-le")
    windowed = read_dicom(data).pixels[0, :6]
    # Below the window -> black, above -> white, centre -> middle grey.
    assert windowed[0] == 0 and windowed[1] == 0 and windowed[5] == 65535
    assert windowed[2] == 0 and windowed[4] == 65535
    assert abs(int(windowed[3]) - 32767) <= 70
    plain = read_dicom(data, apply_voi=False).pixels
    assert_stretched(plain, stored)


def test_voi_sigmoid_is_monotonic_and_centred():
    stored = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    ds = dicom_write.image_dataset(stored, bits_stored=12, attributes={
        "WindowCenter": 2048, "WindowWidth": 512, "VOILUTFunction": "SIGMOID"})
    row = read_dicom(dicom_write.encode(ds, "explicit-le")).pixels[0].astype(int)
    assert np.all(np.diff(row) >= 0)
    assert abs(row[32] - 32767) < 300  # value 2048 = the centre


def test_header_facts():
    ds = dicom_write.image_dataset(ramp(), bits_stored=12, attributes={
        "ImageLaterality": "R", "ViewPosition": "MLO", "PatientOrientation": ["P", "FL"],
        "PixelSpacing": [0.07, 0.07], "PatientID": "SECRET-ID"})
    img = read_dicom(dicom_write.encode(ds, "explicit-le"))
    assert (img.laterality, img.view, img.orientation_row) == ("R", "MLO", "P")
    assert img.pixel_spacing == (0.07, 0.07)
    assert img.patient_id == "SECRET-ID"


def _reason(data):
    with pytest.raises(RejectedImage) as info:
        read_dicom(data)
    return str(info.value)


def test_reads_a_file_without_preamble():
    import io

    ds = dicom_write.image_dataset(ramp(), bits_stored=12, attributes={"ImageLaterality": "L"})
    buf = io.BytesIO()
    ds.preamble = None
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=False)
    data = buf.getvalue()
    assert b"DICM" not in data[:200]
    img = read_dicom(data)
    assert_stretched(img.pixels, ramp())
    assert img.laterality == "L"


def test_rejects_non_dicom():
    assert _reason(b"hello world\n" * 100) == "not a DICOM file"


def test_rejects_truncated_native_pixels():
    data = dicom_write.encode(dicom_write.image_dataset(ramp(), bits_stored=12), "explicit-le")
    assert _reason(data[:-500]) == "truncated pixel data (3340 of 3840 bytes)"  # 48 x 40 x 2


def test_rejects_truncated_compressed_pixels():
    data = dicom_write.encode(dicom_write.image_dataset(ramp(), bits_stored=12), "jpeg2000-lossless")
    assert _reason(data[: len(data) - 300]) == \
        "truncated or corrupt DICOM (no data elements could be read)"


def test_rejects_colour():
    ds = dicom_write.image_dataset(np.zeros((32, 32), np.uint8), bits_stored=8,
                                   sop_class=uid.SecondaryCaptureImageStorage)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()
    assert _reason(dicom_write.encode(ds, "explicit-le")) == (
        "colour image (PhotometricInterpretation RGB, 3 samples per pixel); expected "
        "MONOCHROME1/2 grayscale")


def test_rejects_multiframe():
    ds = dicom_write.image_dataset(ramp(), bits_stored=12)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([ramp(), ramp()]).tobytes()
    assert _reason(dicom_write.encode(ds, "explicit-le")) == (
        "multi-frame object (2 frames); expected one 2-D image")


def test_rejects_structured_report():
    ds = dicom_write.image_dataset(ramp(), bits_stored=12, sop_class=uid.BasicTextSRStorage)
    del ds.PixelData
    assert _reason(dicom_write.encode(ds, "explicit-le")) == "no pixel data (Basic Text SR Storage)"


def test_rejects_constant_image():
    ds = dicom_write.image_dataset(np.full((32, 32), 7, np.uint16), bits_stored=12)
    assert _reason(dicom_write.encode(ds, "explicit-le")) == \
        "constant image (no contrast after the LUTs)"


def test_reasons_carry_no_patient_fields():
    ds = dicom_write.image_dataset(ramp(), bits_stored=12, attributes={
        "PatientName": "DOE^JANE", "PatientID": "MRN123"})
    ds.NumberOfFrames = 2
    reason = _reason(dicom_write.encode(ds, "explicit-le"))
    assert "DOE" not in reason and "MRN123" not in reason
