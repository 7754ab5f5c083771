"""Training on Ray Train: the per-worker loop (``loop``), the driver that builds the
Ray Train trainer and publishes the best checkpoint (``trainer``), and the history file and
curves (``history``)."""
