"""A real two-node Ray cluster on this machine, and real `ray job submit`.

`ray start --head` (loopback only: node IP 127.0.0.1, dashboard on 127.0.0.1) and a second node
with `ray start --address`, each in a process session of its own; the jobs are submitted with
the `ray job submit` CLI and followed with `ray job status` / `ray job logs`. The head requires
a token (this cluster's own, in RAY_AUTH_TOKEN with RAY_AUTH_MODE=token), as a user's would. The fixture stops exactly the
processes of those two sessions, whatever happens, and removes the `ray_current_cluster` files
that point at this cluster (a stale one breaks the next `ray.init`).
"""

from __future__ import annotations

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

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


class TwoNodeCluster:
    """Head + one worker node (2 CPUs each) on 127.0.0.1, each started in its own session."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="mrc-", dir="/tmp")  # short: socket paths
        self.sessions: list[int] = []
        ports = free_ports(16)
        self.gcs_port, self.dashboard_port, client_port = ports[:3]
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
        self._client_port = client_port

    def _node_flags(self, i: int, worker_ports: tuple[int, int]) -> list[str]:
        nm, om, agent, agent_grpc, rt_env, metrics = self.node_ports[i]
        return ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
                f"--node-manager-port={nm}", f"--object-manager-port={om}",
                f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
                f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}",
                "--disable-usage-stats"]

    def _start(self, args: list[str]) -> None:
        proc = subprocess.Popen([RAY, "start", *args], env=self.env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sessions.append(proc.pid)  # the session id is the leader's pid
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out}")

    def start(self) -> None:
        base = 20000 + (os.getpid() % 200) * 100  # worker port ranges of this test process
        self._start(["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={self._client_port}",
                     f"--temp-dir={self.temp_dir}", *self._node_flags(0, (base, base + 49))])
        self._start([f"--address={self.gcs_address}",
                     *self._node_flags(1, (base + 50, base + 99))])
        self.wait_for_nodes(2)

    def ray_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster, with its token in the environment."""
        return subprocess.run([RAY, *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.ray_cli("status", f"--address={self.gcs_address}")
            active = out.stdout.split("Active:")[-1].split("Pending:")[0]
            if out.returncode == 0 and active.count("node_") >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {n} nodes:\n{out.stdout}{out.stderr}")

    def stop(self) -> None:
        procs = [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) in self.sessions]
        for p in procs:
            with _quiet():
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=15)
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


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) in c.sessions]


def submit(cluster: TwoNodeCluster, *entrypoint: str) -> str:
    """`ray job submit --no-wait` from the repository root; returns the submission id."""
    out = cluster.ray_cli("job", "submit", "--address", cluster.dashboard, "--runtime-env",
                          os.path.join(REPO, "runtime_env.yaml"), "--no-wait", "--",
                          *entrypoint, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out.stdout)
    if match:
        return match.group(1)
    raise AssertionError(f"no submission id in:\n{out.stdout}")


def wait_job(cluster: TwoNodeCluster, job_id: str, timeout: float = 600) -> tuple[str, str]:
    """Poll `ray job status` until the job ends; returns (status, `ray job logs`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cluster.ray_cli("job", "status", "--address", cluster.dashboard, job_id)
        text = out.stdout + out.stderr
        for status, phrase in (("SUCCEEDED", "' succeeded"), ("FAILED", "' failed"),
                               ("STOPPED", "' was stopped")):
            if f"Job '{job_id}{phrase}" in text:
                logs = cluster.ray_cli("job", "logs", "--address", cluster.dashboard, job_id)
                return status, logs.stdout
        time.sleep(2)
    cluster.ray_cli("job", "stop", "--address", cluster.dashboard, job_id)
    logs = cluster.ray_cli("job", "logs", "--address", cluster.dashboard, job_id).stdout
    raise AssertionError(f"job {job_id} did not finish in {timeout} s:\n{logs[-3000:]}")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from mammoray.synthetic import FolderOptions, write_folder_dataset

    base = tmp_path_factory.mktemp("cluster")
    write_folder_dataset(FolderOptions(output=str(base / "raw"), patients=4, seed=8,
                                       height=256, width=208, defects=True))
    return base


def test_preprocess_then_two_node_training_by_job_submit(cluster, raw):
    base = raw
    job = submit(cluster, "python", "-m", "jobs.preprocess", "--input", str(base / "raw"),
                 "--output", str(base / "ds"), "--size", "64")
    status, logs = wait_job(cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    with open(base / "ds" / "dataset.json") as fh:
        info = json.load(fh)
    assert info["counts"]["written"] == 16 and info["counts"]["rejected"] >= 5
    assert info["counts"]["input"] == info["counts"]["written"] + info["counts"]["rejected"]

    config = base / "two_nodes.yaml"
    config.write_text("model: {levels: 3, base_filters: 8}\n"
                      "train: {epochs: 2, batch_size: 2, num_workers: 2, cpus_per_worker: 2,"
                      " learning_rate: 0.003, loss: bce, max_failures: 0}\n")
    job = submit(cluster, "python", "-m", "jobs.train", "--config", str(config), "--data",
                 str(base / "ds"), "--output", str(base / "train"))
    status, logs = wait_job(cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    # Two workers of 2 CPUs on two 2-CPU nodes: one per node, so the collective crosses nodes.
    placed = {line.split(" on node ")[1].split()[0] for line in logs.splitlines()
              if "train: worker rank" in line and " on node " in line}
    assert len(placed) == 2, logs[-3000:]
    assert (base / "train" / "best" / "model.keras").is_file()
    with open(base / "train" / "history.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 3  # header + 2 epochs

    # Evaluation and prediction as jobs: one actor per CPU over both nodes, each loading the
    # checkpoint from the object store.
    job = submit(cluster, "python", "-m", "jobs.evaluate", "--checkpoint",
                 str(base / "train" / "best"), "--data", str(base / "ds"), "--split", "train",
                 "--actors", "4", "--bootstrap", "50", "--output", str(base / "eval"))
    status, logs = wait_job(cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    with open(base / "eval" / "metrics.json") as fh:
        assert json.load(fh)["protocol"]["split"] == "train"
    job = submit(cluster, "python", "-m", "jobs.predict", "--checkpoint",
                 str(base / "train" / "best"), "--input", str(base / "raw" / "patient_0000"),
                 "--output", str(base / "pred"))
    status, logs = wait_job(cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert len(list((base / "pred").glob("*_seg.dcm"))) == 4


def test_job_with_bad_config_fails_and_names_the_key(cluster, raw):
    config = raw / "bad.yaml"
    config.write_text("train: {epochs: 0}\n")
    job = submit(cluster, "python", "-m", "jobs.train", "--config", str(config), "--data",
                 str(raw / "ds"), "--output", str(raw / "never"))
    status, logs = wait_job(cluster, job, timeout=180)
    assert status == "FAILED"
    assert "train.epochs" in logs
    assert not (raw / "never").exists()
