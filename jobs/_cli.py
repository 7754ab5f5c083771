"""What every job's ``main`` shares: flag -> config-key overrides and clean error exits."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import Any

from mammoray.core.config import ConfigError

EXIT_USAGE = 2


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """``--address``, ``--num-cpus`` and ``--set KEY=VALUE``, which every Ray job takes."""
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local "
                        "Ray started by the job)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray the job starts")
    parser.add_argument("--set", action="append", default=[], dest="sets",
                        metavar="KEY=VALUE", help="set a config key, e.g. --set "
                        "train.epochs=5 or --set model.dropout=[0.1,0.2]: dotted key, YAML "
                        "value, checked like the config file; applied after the other flags; "
                        "repeatable")


def ray_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"ray.address": args.address, "ray.num_cpus": args.num_cpus}


def config_sets(args: argparse.Namespace) -> dict[str, Any]:
    """The job's ``--set`` values (ConfigError on a malformed one)."""
    from mammoray.core.config import parse_sets

    return parse_sets(args.sets)


def ray_config(args: argparse.Namespace, job: str, sections: tuple[str, ...] = ("ray",)):
    """The ``ray`` section from the flags alone (jobs that take no config file); their
    ``--set`` may only name keys of ``sections`` (``ray``, and ``infer`` for the jobs that
    predict: see :func:`infer_overrides`)."""
    from mammoray.core.config import config_from_dict

    sets = config_sets(args)
    other = [k for k in sets if k.split(".", 1)[0] not in sections]
    if other:
        allowed = " and ".join(f"{s}.*" for s in sections)
        raise ConfigError(f"--set {other[0]}: {job} takes a config's {allowed} keys only (its "
                          "other options are its flags; see --help)")
    return config_from_dict({"ray": {k.split(".", 1)[1]: v
                                     for k, v in ray_overrides(args).items()
                                     if v is not None}}, sets=sets).ray


def infer_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--set infer.KEY=VALUE`` values as overrides of a checkpoint's ``infer`` section (how
    a model trained on patches predicts whole images), checked by the job."""
    found = {k.split(".", 1)[1]: v for k, v in config_sets(args).items()
             if k.startswith("infer.")}
    return found or None


EXIT_INTERRUPTED = 130
NOTHING_PUBLISHED = "nothing partial was published; run the same command again"


def run(job: Callable[[], Any], *, expected: tuple[type[BaseException], ...] = (),
        interrupted: str = NOTHING_PUBLISHED) -> int:
    """Run ``job``; a bad config, path or input, or a request the cluster cannot meet, ends
    with one clear line and exit code 2. Ctrl+C (SIGINT) and SIGTERM (``ray job stop``, a
    scheduler's kill) stop it alike: outputs are only published when complete, and the job
    ends with ``interrupted: <interrupted>`` (what was kept, how to continue) and code 130."""
    from mammoray.core.ray_session import sigterm_as_sigint
    from mammoray.core.resources import ResourceError

    previous = signal.signal(signal.SIGTERM, sigterm_as_sigint)
    try:
        job()
    except (ConfigError, FileExistsError, ResourceError, *expected) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0

