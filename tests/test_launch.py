"""The launch scripts, each running a 2-node job on this one machine: two launches on
127.0.0.1, one process per node, real torchrun / DeepSpeed launcher rendezvous and gloo.

SLURM itself is not here: the test sets the variables SLURM sets, and stands in for its
two commands the script calls (``srun``: the same command once per node, with
SLURM_NODEID, passing SIGTERM on as SLURM does, to every process of the step: each node's
launcher and all its descendants, the ranks and their loader workers; ``scontrol``: the
node list, and a record of ``requeue``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from procs import complete_steps, start, wait_for
from ranks import free_port

RING = ["--data", "builtin:ring", "--lr-decay", "0", "--no-progress", "--log-every", "25"]


def _python_env(tmp_path: Path) -> dict:
    # the launchers run `torchrun`, `deepspeed` and `python3` from this interpreter's venv
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}


def _two_nodes(cmds: list[list[str]], tmp_path: Path, env: dict) -> list[str]:
    jobs = [start(cmd, tmp_path / f"node{i}.log", env=env, cwd=tmp_path)
            for i, cmd in enumerate(cmds)]
    rcs = [job.wait(300) for job in jobs]
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(len(cmds))]
    assert rcs == [0, 0], logs
    return logs


@pytest.mark.slow
def test_torchrun_script_two_nodes(tmp_path):
    port = free_port()
    cmds = [["bash", f"{REPO}/launch/torchrun.sh", "--nnodes", "2", "--node-rank", str(i),
             "--nproc", "1", "--endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t2", "--",
             *RING, "--steps", "50", "--out", "run"] for i in range(2)]
    logs = _two_nodes(cmds, tmp_path, _python_env(tmp_path))
    assert "over 2 rank(s), ddp" in "".join(logs)
    assert complete_steps(tmp_path / "run") == [50]


@pytest.mark.slow
def test_deepspeed_launcher_script_two_nodes(tmp_path):
    port = free_port()
    (tmp_path / "hostfile").write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    cmds = [["bash", f"{REPO}/launch/deepspeed.sh", "--hostfile", "hostfile", "--master",
             f"127.0.0.1:{port}", "--no-ssh", "--node-rank", str(i), "--",
             *RING, "--steps", "50", "--out", "run"] for i in range(2)]
    logs = _two_nodes(cmds, tmp_path, _python_env(tmp_path))
    assert "over 2 rank(s), deepspeed" in "".join(logs)
    assert complete_steps(tmp_path / "run") == [50]


SRUN = """#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
# every process of the step: torchrun starts each rank in a session of its own, so
# neither a process group nor a session holds them all (SLURM finds them by cgroup)
descendants() { local c; for c in $(ps -o pid= --ppid "$1"); do echo "$c"; descendants "$c"; done; }
step_pids() { local p; for p in "${pids[@]}"; do echo "$p"; descendants "$p"; done; }
trap 'kill -TERM $(step_pids) 2>/dev/null' TERM
rc=0
for p in "${pids[@]}"; do
  while kill -0 $p 2>/dev/null; do wait $p || rc=$?; done
  wait $p || rc=$?
done
exit $rc
"""
SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo 127.0.0.1 ;;
  "requeue "*) echo "requeue $2" >> "$SLURM_RECORD" ;;
esac
"""


@pytest.mark.slow
def test_slurm_script_two_nodes_preempted_then_requeued(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = _python_env(tmp_path)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="node[1-2]", NPROC_PER_NODE="1",
               MASTER_PORT=str(free_port()), SLURM_RECORD=str(tmp_path / "record"))
    cmd = ["bash", f"{REPO}/launch/slurm.sbatch", *RING, "--steps", "400"]
    run = tmp_path / "runs" / "ring-mlp-fastgan-4242"  # named after the job id
    job = start(cmd, tmp_path / "job.log", env=env, cwd=tmp_path)
    wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size,
             180, "training", job)
    job.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit
    job.wait(120)
    log = (tmp_path / "job.log").read_text()
    assert "rendezvous 127.0.0.1" in log and "over 2 rank(s)" in log, log
    assert "stopped by SIGTERM on rank 0, SIGTERM on rank 1" in log, log
    (step,) = complete_steps(run)
    assert 25 <= step < 400
    assert (tmp_path / "record").read_text() == "requeue 4242\n"

    # the requeued job: the same command and job id resume and finish
    job = start(cmd, tmp_path / "job2.log", env=env, cwd=tmp_path)
    assert job.wait(300) == 0, (tmp_path / "job2.log").read_text()
    assert f"resuming from runs/ring-mlp-fastgan-4242/checkpoints/step-{step:08d}" in \
        (tmp_path / "job2.log").read_text()
    assert complete_steps(run)[-1] == 400


@pytest.fixture
def two_namespaces():
    """Two network namespaces joined by a veth pair: 10.99.N.1 and 10.99.N.2, each node
    with its own address, as two hosts on a network (needs root and `ip netns`)."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = os.getpid() % 200
    ns, veth = [f"fg{tag}n{i}" for i in (0, 1)], [f"fg{tag}v{i}" for i in (0, 1)]
    addrs = [f"10.99.{tag}.{i + 1}" for i in (0, 1)]
    setup = [["ip", "netns", "add", ns[0]], ["ip", "netns", "add", ns[1]],
             ["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]]]
    for i in (0, 1):
        setup += [["ip", "link", "set", veth[i], "netns", ns[i]],
                  ["ip", "-n", ns[i], "addr", "add", f"{addrs[i]}/24", "dev", veth[i]],
                  ["ip", "-n", ns[i], "link", "set", veth[i], "up"],
                  ["ip", "-n", ns[i], "link", "set", "lo", "up"]]
    try:
        for cmd in setup:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"cannot make network namespaces here: {r.stderr.strip()}")
        yield ns, veth, addrs
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.slow
def test_torchrun_script_two_nodes_in_two_network_namespaces(tmp_path, two_namespaces):
    """Each node in its own network namespace with its own address: the rendezvous,
    the store and gloo go over the (virtual) network between them."""
    ns, veth, addrs = two_namespaces
    port = free_port()
    env = _python_env(tmp_path)
    cmds = [["ip", "netns", "exec", ns[i], "env", f"GLOO_SOCKET_IFNAME={veth[i]}",
             "bash", f"{REPO}/launch/torchrun.sh", "--nnodes", "2", "--nproc", "1",
             "--endpoint", f"{addrs[0]}:{port}", "--rdzv-id", "netns",
             "--local-addr", addrs[i], *(["--rdzv-conf", "is_host=1"] if i == 0 else []),
             "--", *RING, "--steps", "50", "--out", "run"] for i in range(2)]
    logs = _two_nodes(cmds, tmp_path, env)
    assert "over 2 rank(s), ddp" in "".join(logs)
    assert complete_steps(tmp_path / "run") == [50]
