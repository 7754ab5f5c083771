"""Real Ray clusters for tests, started with `ray start` on 127.0.0.1, each node in a process
session of its own, and stopped exactly: the fixture ends the processes of those sessions (never
`ray stop --force`, which ends every Ray on the machine) and removes the `ray_current_cluster`
files that point at the cluster (a stale one breaks the next `ray.init`).

The head requires a token (this cluster's own, in RAY_AUTH_TOKEN with RAY_AUTH_MODE=token), as
Ray 2.60's `ray start --head` does by default; every node and client gets it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil
from conftest import REPO

BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


WORKER_PORT_FLOOR = 10000


def worker_port_base() -> int:
    """The first of 100 worker ports for this test process, below the kernel's ephemeral range:
    the other ports (``free_ports``, Ray's random ones) come from that range, and Ray refuses to
    start when one of them falls inside the worker range (it did: 38741 in 38700-38799)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    slots = max(1, min(200, (low - WORKER_PORT_FLOOR) // 100))
    return WORKER_PORT_FLOOR + (os.getpid() % slots) * 100


class SessionCluster:
    """Nodes started with `ray start`, each in its own session; ``stop`` ends exactly them."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="mrc-", dir="/tmp")  # short: socket paths
        self.sessions: list[int] = []
        ports = free_ports(16)
        self.gcs_port, self.dashboard_port, self._client_port = ports[:3]
        self.node_ports = [ports[3:9], ports[9:15]]
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # A head that requires a token (as Ray 2.60's `ray start --head` does by default): the
        # token of this cluster only, given to every node and to the submitting client.
        self.token = secrets.token_hex(32)
        self.env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
                        RAY_USAGE_STATS_ENABLED="0", PYTHONPATH="", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=self.token)
        self.env.pop("RAY_ADDRESS", None)
        self.worker_port_base = worker_port_base()

    def node_flags(self, i: int, worker_ports: tuple[int, int], cpus: int = 2) -> list[str]:
        nm, om, agent, agent_grpc, rt_env, metrics = self.node_ports[i]
        return ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
                f"--node-manager-port={nm}", f"--object-manager-port={om}",
                f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
                f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}",
                "--disable-usage-stats"]

    def head_flags(self) -> list[str]:
        return ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self._client_port}", f"--temp-dir={self.temp_dir}"]

    def start_node(self, args: list[str], env: dict[str, str] | None = None) -> None:
        """`ray start ARGS` in a new session (its id is the leader's pid)."""
        proc = subprocess.Popen([RAY, "start", *args], env=env or self.env,
                                start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out}")

    def ray_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster, with its token in the environment."""
        return subprocess.run([RAY, *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def status(self) -> str | None:
        """What `ray status` prints, from the head's dashboard (None if it did not answer).

        The dashboard formats it as the CLI does; asking it over HTTP costs the machine a
        request, where `ray status` costs a new Python process importing Ray (about a CPU
        second each, on the 2 cores the jobs under test need)."""
        request = urllib.request.Request(f"{self.dashboard}/api/cluster_status?format=1",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.load(response)
        except (OSError, ValueError):
            return None
        # Ray's REST responses name their fields in camel case (rest_response).
        text = (body.get("data") or {}).get("clusterStatus")
        return text if body.get("result") and isinstance(text, str) else None

    def active_nodes(self) -> int | None:
        """Alive nodes by the cluster's status (None if it did not answer)."""
        text = self.status()
        if text is None or "Active:" not in text:
            return None
        active = text.split("Active:")[-1].split("Pending:")[0]
        # " 1 node_<id>" per node, or " <count> <node type>" with an autoscaler.
        return sum(int(m.group(1)) for m in re.finditer(r"^\s*(\d+) \S+$", active, re.M))

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (self.active_nodes() or 0) >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {n} nodes:\n{self.status()}")

    def processes(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) in self.sessions]

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            with _quiet():
                p.send_signal(signal.SIGTERM)
        # A short grace: the Python processes (dashboard, job drivers) end on SIGTERM within
        # it, while the GCS, the raylets, their runtime-env agents and the autoscaler's monitor
        # were measured still running 20 s after one; the test's cluster is discarded anyway.
        _, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:
            with _quiet():
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        for folder in (self.temp_dir, "/tmp/ray"):
            marker = os.path.join(folder, "ray_current_cluster")
            with _quiet():
                if self.gcs_address in open(marker).read():
                    os.remove(marker)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class TwoNodeCluster(SessionCluster):
    """Head + one worker node (2 CPUs each) on 127.0.0.1."""

    def start(self) -> None:
        base = self.worker_port_base
        self.start_node([*self.head_flags(), *self.node_flags(0, (base, base + 49))])
        self.start_node([f"--address={self.gcs_address}",
                         *self.node_flags(1, (base + 50, base + 99))])
        self.wait_for_nodes(2)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (OSError, psutil.Error))




class FakeAutoscalingCluster(SessionCluster):
    """Ray's fake multi-node autoscaler (`RAY_FAKE_CLUSTER=1 ray start --head
    --autoscaling-config=...`): a real head node whose autoscaler starts and ends worker nodes
    (real raylets on this machine) as resource demands come and go.

    Not ``ray.cluster_utils.AutoscalingCluster``: in Ray 2.60's wheel it reads a file the wheel
    does not ship and runs `ray stop --force`. The worker nodes the autoscaler starts are
    children of the head's monitor, so they are in the head's session and ``stop`` ends them.
    """

    def __init__(self, *, head_cpus: int, worker_cpus: int, max_workers: int) -> None:
        super().__init__()
        self.head_cpus, self.worker_cpus, self.max_workers = head_cpus, worker_cpus, max_workers
        self.config_path = os.path.join(self.temp_dir, "fake.yaml")

    def write_config(self) -> None:
        import yaml

        config = {
            "cluster_name": "fake_multinode",
            "max_workers": self.max_workers,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "gcs_address": self.gcs_address},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": self.head_cpus, "GPU": 0},
                                     "node_config": {}, "max_workers": 0},
                "ray.worker.cpu": {"resources": {"CPU": self.worker_cpus,
                                                 "object_store_memory": 300_000_000},
                                   "node_config": {}, "min_workers": 0,
                                   "max_workers": self.max_workers},
            },
            "head_node_type": "ray.head.default",
            "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.2, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        }
        with open(self.config_path, "w") as fh:
            yaml.safe_dump(config, fh)

    def start(self) -> None:
        self.write_config()
        base = self.worker_port_base
        env = dict(self.env, RAY_FAKE_CLUSTER="1")
        self.start_node([*self.head_flags(), f"--autoscaling-config={self.config_path}",
                         *self.node_flags(0, (base, base + 99), cpus=self.head_cpus)], env=env)
        self.wait_for_nodes(1)


@contextlib.contextmanager
def running(cluster: SessionCluster):
    """Start ``cluster``, yield it, stop it, and check that none of its processes is left."""
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.processes()


def worker_nodes(logs: str, marker: str = "train: worker rank") -> set[str]:
    """The nodes of the training workers whose start lines (``marker`` ... ``on node <id>``)
    a job's logs hold."""
    return {line.split(" on node ")[1].split()[0] for line in logs.splitlines()
            if marker in line and " on node " in line}


def run_job(cluster: SessionCluster, *entrypoint: str, timeout: float = 600) -> tuple[str, str]:
    """`ray job submit` from the repository root, waiting as a user's does: the CLI tails the
    job's logs until it ends, in one process (polling `ray job status` started a Ray CLI every
    two seconds, CPU the job itself needed). Returns (SUCCEEDED, FAILED or STOPPED, the CLI's
    output, which holds the job's logs). Past ``timeout`` the job is stopped and the test
    fails with its output."""
    args = [RAY, "job", "submit", "--address", cluster.dashboard, "--runtime-env",
            os.path.join(REPO, "runtime_env.yaml"), "--", *entrypoint]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=cluster.env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        text = out.read()
    match = re.search(r"Job '(raysubmit_\w+)' submitted successfully", text)
    assert match, f"no submission id in:\n{text[-3000:]}"
    job_id = match.group(1)
    for status, phrase in (("SUCCEEDED", "' succeeded"), ("FAILED", "' failed"),
                           ("STOPPED", "' was stopped")):
        if f"Job '{job_id}{phrase}" in text:
            return status, text
    cluster.ray_cli("job", "stop", "--address", cluster.dashboard, job_id)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s:\n{text[-3000:]}")
