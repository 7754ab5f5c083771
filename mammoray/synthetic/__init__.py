"""The synthetic data generator: mammograms with exact ground truth (``images``), written in
the real datasets' layouts (``folder``, ``cbis_ddsm``, ``inbreast``) as DICOM files in any
transfer syntax (``dicom_write``). Tests and the demo run the real code paths on them."""
