"""The prediction as a DICOM Segmentation (highdicom) that a radiology viewer opens beside its
source image: binary, one segment "breast mass" (SCT 4147007 Mass, category SCT 49755003
Morphologically abnormal structure, anatomic region SCT 76752008 Breast), algorithm type
AUTOMATIC, referencing the source image's study, series, SOP instance and frame of reference."""

from __future__ import annotations

import io

import numpy as np

SEG_SERIES_NUMBER = 9901


def dicom_seg(source_bytes: bytes, mask: np.ndarray, *, run_id: str,
              software_version: str) -> bytes:
    """A binary DICOM Segmentation of ``mask`` (source grid) referencing the source image; the
    SEGs of one run and study share one series."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    src = pydicom.dcmread(io.BytesIO(source_bytes), stop_before_pixels=True, force=True)
    series_uid = pydicom.uid.generate_uid(
        entropy_srcs=[run_id, str(src.get("StudyInstanceUID", ""))])
    algorithm = hd.AlgorithmIdentificationSequence(
        name="mammoray U-Net", version=software_version,
        family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="breast mass",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Breast])
    pixel_measures = None
    spacing = src.get("PixelSpacing") or src.get("ImagerPixelSpacing")
    if "FrameOfReferenceUID" in src and spacing:
        # With a frame of reference the SEG's Pixel Measures need a Slice Thickness (PS3.3
        # C.7.6.16.2.1). A projection image has none: the compressed breast thickness when the
        # header gives it, else 1 mm.
        thickness = float(src.get("BodyPartThickness") or 1.0)
        pixel_measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing],
                                                  slice_thickness=thickness)
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=(mask > 0).view(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="mammoray", manufacturer_model_name="mammoray U-Net",
        software_versions=software_version, device_serial_number="none",
        series_description="mammoray breast-mass segmentation", omit_empty_frames=False,
        pixel_measures=pixel_measures)
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()

