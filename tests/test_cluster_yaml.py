"""cluster.yaml validates against the autoscaler schema shipped inside the ray package."""

import json
import os

import jsonschema
import ray
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
