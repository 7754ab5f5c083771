"""Thin job entry points: ``python -m jobs.<job> --config ...``; configs in ``jobs/configs/``."""
