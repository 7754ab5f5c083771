"""Evaluation of a checkpoint on a split of a preprocessed dataset: the figures (``figures``:
per image, lesion level, FROC, bootstrap), scoring on Ray Data (``scoring``), the report files
(``report``) and the job (``job``)."""
