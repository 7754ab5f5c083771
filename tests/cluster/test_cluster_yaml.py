"""cluster.yaml validates against the autoscaler schema shipped inside the ray package."""

import json
import os

import jsonschema
import pytest
import ray
import yaml
from conftest import REPO

pytestmark = pytest.mark.unit


def load():
    with open(os.path.join(REPO, "cluster.yaml")) as fh:
        return yaml.safe_load(fh)


def test_cluster_yaml_matches_ray_schema():
    schema_path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(schema_path) as fh:
        schema = json.load(fh)
    jsonschema.validate(load(), schema)


def test_node_types_and_image_match_the_pins():
    cfg = load()
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    types = cfg["available_node_types"]
    assert types["ray.worker.cpu"]["min_workers"] == 0
    assert types["ray.worker.cpu"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert types["ray.worker.gpu"]["resources"]["GPU"] >= 1
    assert all(isinstance(v, int) for t in types.values() for v in t["resources"].values())
    text = open(os.path.join(REPO, "cluster.yaml")).read().lower()
    assert "aws_secret" not in text and "aws_access_key" not in text


def test_every_job_config_fits_a_node_type():
    """A training worker (or a trial's worker) asks for train.cpus_per_worker CPUs and, with
    use_gpu, one GPU: some worker node type must hold it, and a GPU request must find a GPU
    node type that the autoscaler may start (max_workers > 0)."""
    import glob

    from mammoray.core.config import load_config

    types = load()["available_node_types"]
    configs = sorted(glob.glob(os.path.join(REPO, "jobs", "configs", "*.yaml")))
    assert configs
    for path in configs:
        cfg = load_config(path)
        t = cfg.train
        for cpus in {t.cpus_per_worker, cfg.tune.cpus_per_worker or t.cpus_per_worker}:
            need = {"CPU": cpus, "GPU": 1 if t.use_gpu else 0}
            fits = [name for name, nt in types.items()
                    if nt.get("max_workers", 0) > 0
                    and all(nt["resources"].get(k, 0) >= v for k, v in need.items() if v)]
            assert fits, f"{os.path.basename(path)} asks {need}; no worker node type holds it"
            if t.use_gpu:
                assert all(types[name]["resources"].get("GPU", 0) >= 1 for name in fits)
    # The head runs drivers only: no CPUs for tasks, so work always lands on workers.
    assert types[load()["head_node_type"]]["resources"] == {"CPU": 0}
