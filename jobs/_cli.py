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
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local "
                        "Ray started by the job)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray the job starts")


def ray_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"ray.address": args.address, "ray.num_cpus": args.num_cpus}


def ray_config(args: argparse.Namespace):
    """The ``ray`` section from the flags alone (jobs that take no config file)."""
    from mammoray.core.config import config_from_dict

    return config_from_dict({"ray": {k.split(".", 1)[1]: v
                                     for k, v in ray_overrides(args).items()
                                     if v is not None}}).ray


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

