"""TensorFlow's runtime in a Ray worker or actor: thread pools sized to the CPUs it reserved,
GPU memory growth, and the mixed-precision policy. One place for the version-sensitive
TensorFlow settings of training and inference."""

from __future__ import annotations


def configure_tensorflow(cpus: float, use_gpu: bool) -> None:
    """Size TensorFlow's (and OpenCV's) thread pools to the worker's CPUs; let GPU memory grow.

    TensorFlow ignores OMP_NUM_THREADS (which Ray sets to 1): without this, each worker's pools
    use every core and two workers on two cores oversubscribe them.
    """
    import cv2
    import tensorflow as tf

    threads = max(1, int(round(cpus)))
    cv2.setNumThreads(threads)
    tf.get_logger().setLevel("WARNING")  # not "INFO:tensorflow:Using MirroredStrategy ..."
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        if use_gpu:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process (e.g. a driver that trained)


def cpu_has_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_policy(tcfg, cpu_bf16: bool | None = None) -> str:
    """The Keras dtype policy of ``train.mixed_precision`` on this worker: float16 with GPUs
    (``auto`` with ``use_gpu``, or ``on``); bfloat16 with ``bf16``, or ``auto`` on a CPU that
    computes bfloat16 natively (emulated bfloat16 would be slower, so other CPUs stay float32;
    benchmarks/RESULTS.md); else float32. Variables stay float32 in both mixed policies."""
    mode = tcfg.mixed_precision
    if mode == "on" or (mode == "auto" and tcfg.use_gpu):
        return "mixed_float16"
    if mode == "bf16" or (mode == "auto" and (cpu_has_bf16() if cpu_bf16 is None
                                              else cpu_bf16)):
        return "mixed_bfloat16"
    return "float32"
