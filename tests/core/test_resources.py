"""Requests against capacities: exact arithmetic and messages on hand-made clusters."""

import pytest

from mammoray.core.resources import Request, cpus_that_fit, fits, placeable

pytestmark = pytest.mark.unit

ONE_NODE = [{"CPU": 2.0}]
TWO_NODES = [{"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}]


def test_units_are_placed_node_by_node():
    assert placeable(2.0, 0.0, ONE_NODE) == 1 and placeable(1.0, 0.0, ONE_NODE) == 2
    assert placeable(1.5, 0.0, TWO_NODES) == 2  # 1.5 + 1.5 never fits on one 2-CPU node
    assert placeable(3.0, 0.0, TWO_NODES) == 0  # no node has 3 CPUs, though the cluster has 4
    assert placeable(1.0, 1.0, TWO_NODES) == 1  # one GPU in all
    assert fits(Request("training", 2, "worker", 1.0), ONE_NODE)
    assert not fits(Request("training", 2, "worker", 2.0), ONE_NODE)
    assert fits(Request("training", 2, "worker", 2.0), TWO_NODES)


def test_the_most_cpus_per_unit_that_fit():
    assert cpus_that_fit(2, 0.0, ONE_NODE) == 1
    assert cpus_that_fit(4, 0.0, ONE_NODE) == 0.5
    assert cpus_that_fit(5, 0.0, ONE_NODE) == 0.0
    assert cpus_that_fit(2, 0.0, TWO_NODES) == 2


def test_requests_say_their_numbers():
    assert Request("training", 2, "worker", 2.0).describe() == \
        "training asks 2 workers x 2 CPUs = 4 CPUs"
    assert Request("prediction", 1, "actor", 1.0, 1.0).describe() == \
        "prediction asks 1 actor x 1 CPU + 1 GPU = 1 CPU + 1 GPU"
