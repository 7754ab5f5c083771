"""Live progress of a training run, on the driver's node, while it runs.

:class:`EpochProgress` is a Ray Train ``UserCallback``: Ray runs it in the run's controller,
which Ray Train places on the node of the driver (``jobs.train``), after every report of the
workers. Per epoch it

- prints one line (epoch/total, losses, validation Dice, IoU and false-positive image rate,
  seconds per epoch, the time left, the best so far); Ray forwards the controller's output to
  the driver's console and to ``ray job logs``;
- rewrites ``history.csv`` and ``curves.png`` in the output folder (a local folder or a URI),
  so they can be watched while the run goes on;
- writes TensorBoard event files (tensorboardX) under ``<output>/tensorboard``: every metric
  per epoch, training and validation side by side, and, when the workers send them, pictures
  of validation images with the truth (green) and the prediction (red) outlined.

A worker group that restarts (a failure, or a run resumed from its latest checkpoint) goes on
from an earlier epoch: rank 0's first report then carries the history restored from the
checkpoint (``restored_history``), and rows after it are dropped, as the run drops them.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from typing import Any

from ray.train import UserCallback

from mammoray.core import storage
from mammoray.training.history import write_history

# Scalars written to TensorBoard: (tag, key of the training value, key of the validation value).
SCALARS = (("loss", "loss", "val_loss"), ("dice", "dice", "val_dice"), ("iou", "iou", "val_iou"),
           ("pixel_accuracy", "pixel_accuracy", "val_pixel_accuracy"),
           ("fp_rate", "fp_rate", "val_fp_rate"))
RESTORED = "restored_history"
OVERLAYS = "validation_overlays"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _num(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "-"


def epoch_line(row: dict[str, Any], epochs: int, seconds_per_epoch: float,
               best: dict[str, Any]) -> str:
    """The console line of one epoch."""
    left = (epochs - int(row["epoch"])) * seconds_per_epoch
    return (f"epoch {row['epoch']}/{epochs}: loss {_num(row['loss'])}, val loss "
            f"{_num(row['val_loss'])}, val Dice {_num(row['val_dice'])}, IoU "
            f"{_num(row['val_iou'])}, FP images {_num(row['val_fp_rate'])}; "
            f"{seconds_per_epoch:.1f} s/epoch, {duration(left)} left; best val IoU "
            f"{_num(best['val_iou'])} (epoch {best['epoch']})")


def validation_pictures(model, x, y, *, max_side: int = 256) -> list[str]:
    """Pictures of validation images (model input ``x``, truth ``y``) with the truth outlined
    in green and the prediction (probability >= 0.5) in red, as base64 PNG text: a report's
    metrics must be JSON (Ray Train keeps the metrics of its checkpoints in a JSON snapshot)."""
    from mammoray.core.overlays import draw_overlay
    from mammoray.model.inputs import predict_probabilities

    probabilities = predict_probabilities(model, x)
    return [encode_picture(draw_overlay(x[i, ..., 0], probabilities[i] >= 0.5,
                                        y[i, ..., 0] > 0.5, max_side=max_side))
            for i in range(len(x))]


def encode_picture(bgr) -> str:
    import cv2

    ok, png = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("a validation picture could not be encoded as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def decode_pictures(pictures: list[str]):
    """(K, H, W, 3) uint8 RGB from :func:`validation_pictures`' text (pictures of different
    sizes are padded to the largest)."""
    import cv2
    import numpy as np

    rgb = [cv2.imdecode(np.frombuffer(base64.b64decode(p), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
           for p in pictures]
    height, width = max(p.shape[0] for p in rgb), max(p.shape[1] for p in rgb)
    out = np.zeros((len(rgb), height, width, 3), np.uint8)
    for i, picture in enumerate(rgb):
        out[i, :picture.shape[0], :picture.shape[1]] = picture
    return out


def start_mlflow(cfg, run_name: str):
    """An MLflow run at ``train.mlflow_tracking_uri`` through Ray's ``setup_mlflow`` (on rank
    0 of a Ray Train run), with the config's model and train keys as parameters."""
    from ray.air.integrations.mlflow import setup_mlflow

    uri = cfg.train.mlflow_tracking_uri
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked; a local store is what file: means.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    params = {f"{section}.{k}": v for section in ("model", "train")
              for k, v in cfg.to_dict()[section].items()
              if v is not None and k not in ("data", "output", "mlflow_tracking_uri")}
    return setup_mlflow(params, tracking_uri=uri, experiment_name=cfg.train.mlflow_experiment,
                        create_experiment_if_not_exists=True, run_name=run_name)


class EpochProgress(UserCallback):
    """See the module's docstring. Ray pickles it to ship it to the controller; the
    TensorBoard writer is opened there."""

    def __init__(self, output: str, epochs: int, *, tensorboard: bool = True) -> None:
        self.output, self.epochs, self.tensorboard = output, epochs, tensorboard
        self.rows: dict[int, dict[str, Any]] = {}
        self.timings: list[float] = []
        self._writer = None
        self._local_events: str | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics and "epoch" in metrics[0]:
            self.on_epoch(dict(metrics[0]))

    def after_exception(self, run_context, worker_exceptions) -> None:
        self.close()

    def on_epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        restored = row.pop(RESTORED, None)
        overlays = row.pop(OVERLAYS, None)
        if restored is not None:
            self.rows = {int(h["epoch"]): h for h in restored}
        self.rows = {e: r for e, r in self.rows.items() if e < epoch}
        self.rows[epoch] = row
        self.timings.append(float(row.get("seconds", 0.0)))
        history = [self.rows[e] for e in sorted(self.rows)]
        best = max(history, key=lambda h: h.get("val_score", float("-inf")))
        recent = self.timings[-5:]
        print(epoch_line(row, self.epochs, sum(recent) / len(recent), best), flush=True)
        write_history(history, self.output)
        if self.tensorboard:
            self._write_events(row, overlays, first=restored is not None or len(history) == 1)
            if epoch >= self.epochs:
                # The run's last report (Ray Train calls no hook after it): the local copy of
                # the events of an output on object storage goes now, not at the process' end.
                self.close()

    def _write_events(self, row: dict[str, Any], overlays, *, first: bool) -> None:
        """Every event of an epoch on disk before the report returns: Ray Train has no hook for
        a run's end, and tensorboardX's own writer keeps events in a queue that its thread
        writes later (the last epoch's were lost when the controller exited first), so events
        go straight to the file."""
        from tensorboardX import summary

        epoch = int(row["epoch"])
        if self._writer is None or first:
            self._open_writer(purge_step=epoch)
        summaries = []
        for tag, train_key, val_key in SCALARS:
            for name, key in (("train", train_key), ("validation", val_key)):
                if key in row:
                    summaries.append(summary.scalar(f"{tag}/{name}", float(row[key])))
        for key in ("learning_rate", "seconds"):
            if key in row:
                summaries.append(summary.scalar(f"run/{key}", float(row[key])))
        if overlays:
            summaries.append(summary.image("validation/overlays", decode_pictures(overlays),
                                           dataformats="NHWC"))
        for one in summaries:
            self._write(step=epoch, summary=one)
        self._writer.flush()
        if self._local_events != self._events_dir():
            storage.copy_local_tree(self._local_events, self._events_dir())

    def _write(self, **fields) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._writer.write_event(Event(wall_time=time.time(), **fields))

    def _events_dir(self) -> str:
        return storage.join(self.output, "tensorboard")

    def _open_writer(self, purge_step: int) -> None:
        """A new event file; its first event (a session start at ``purge_step``) makes
        TensorBoard drop the events of earlier files from that epoch on (the epochs a
        restarted run does again), as tensorboardX's ``purge_step`` does."""
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import SessionLog

        self.close()
        if storage.is_uri(self.output):
            self._local_events = tempfile.mkdtemp(prefix="mammoray-tb-")
        else:
            self._local_events = self._events_dir()
            os.makedirs(self._local_events, exist_ok=True)
        self._writer = EventsWriter(os.path.join(self._local_events, "events"),
                                    filename_suffix=f".{time.time_ns()}")
        self._write(step=purge_step, session_log=SessionLog(status=SessionLog.START))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self._local_events and self._local_events != self._events_dir():
                shutil.rmtree(self._local_events, ignore_errors=True)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_writer"] = None
        return state
