"""The TensorFlow runtime settings: the mixed-precision policy per configuration and CPU."""

import pytest

from mammoray.core.config import config_from_dict
from mammoray.model.runtime import precision_policy

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("mode,gpu,bf16_cpu,policy", [
    ("auto", False, False, "float32"), ("auto", False, True, "mixed_bfloat16"),
    ("auto", True, True, "mixed_float16"), ("on", False, False, "mixed_float16"),
    ("bf16", False, False, "mixed_bfloat16"), ("off", True, True, "float32"),
    ("off", False, True, "float32")])
def test_precision_policy(mode, gpu, bf16_cpu, policy):
    tcfg = config_from_dict({"train": {"mixed_precision": mode, "use_gpu": gpu}}).train
    assert precision_policy(tcfg, cpu_bf16=bf16_cpu) == policy
