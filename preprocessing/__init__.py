"""Raw mammography datasets -> Parquet: pure per-image functions and one Ray Data pipeline."""
