"""Prediction for new mammograms on the original DICOM pixel grid: the Ray Data actor
(``predictor``), the DICOM Segmentation writer (``seg``), outlined pictures (``overlays``) and
the job (``job``)."""
