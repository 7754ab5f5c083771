"""Hyper-parameter search on Ray Tune + Optuna + ASHA over training runs: the search space
(``space``), the driver (``search``) and the results it writes (``results``)."""
