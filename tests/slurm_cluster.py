"""A real single-node SLURM cluster for the tests: Debian's slurm-wlm + munge, started here.

The daemons run in the foreground as children of the test process (so stopping them is
exact) with their state, spool and logs in a temporary folder. Only the config file has to
sit at the system path: the SLURM executor plugin's job step drops ``SLURM_CONF``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from system_packages import Unavailable as SlurmUnavailable  # noqa: F401 (the tests catch it)
from system_packages import ensure_installed as ensure_installed_with_apt

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MARKER = "# written by the vafusion test suite (tests/slurm_cluster.py)"
PACKAGES = ["slurm-wlm", "munge"]
FAKE_GPUS = 2


def ensure_installed() -> None:
    ensure_installed_with_apt(["sbatch", "slurmctld", "slurmd", "munged"], PACKAGES)


def _node_hardware() -> dict[str, str]:
    """CPUs and memory as slurmd detects them (``slurmd -C``)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    return {"CPUs": fields["CPUs"], "RealMemory": fields["RealMemory"]}


class SlurmCluster:
    """slurmctld + slurmd + munged on this host, one partition, ``FAKE_GPUS`` fake GPUs."""

    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname()
        self.prolog = root / "record-allocation.sh"
        self.allocations = root / "allocations.txt"
        self.procs: list[subprocess.Popen] = []

    def _write_config(self) -> None:
        for path in (SLURM_CONF, GRES_CONF):
            if path.exists() and MARKER not in path.read_text():
                raise SlurmUnavailable(f"{path} exists and is not ours: this machine has its own SLURM setup")
        state, spool, logs = (self.root / name for name in ("state", "spool", "logs"))
        for folder in (state, spool, logs):
            folder.mkdir(parents=True, exist_ok=True)
        hw = _node_hardware()
        # GPU scheduling without GPUs: gres File= entries are links to /dev/null.
        gpu_files = []
        for i in range(FAKE_GPUS):
            link = self.root / f"fake-gpu{i}"
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
            gpu_files.append(str(link))
        # the node line of `scontrol show job -d` while the job is allocated: "... GRES=gpu:1(IDX:0)"
        self.prolog.write_text(
            "#!/bin/sh\n"
            f"gres=$({shutil.which('scontrol')} show job -d \"$SLURM_JOB_ID\""
            " | sed -n 's/.* GRES=\\([^ ]*\\).*/\\1/p' | head -1)\n"
            f"echo \"$SLURM_JOB_ID ${{gres:-none}}\" >> {self.allocations}\n")
        self.prolog.chmod(0o755)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(f"""{MARKER}
ClusterName=vafusion-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd.log
# no systemd, no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no accounting database: finished jobs must stay visible to squeue for status checks
AccountingStorageType=accounting_storage/none
# slurmctld runs this when it allocates each job: it records the job's allocated GRES
# (squeue's tres-alloc would list GPUs only with AccountingStorageTRES=gres/gpu, which needs slurmdbd)
PrologSlurmctld={self.prolog}
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={hw['CPUs']} RealMemory={hw['RealMemory']} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        GRES_CONF.write_text(MARKER + "\n" + "".join(
            f"NodeName={self.node} Name=gpu File={path}\n" for path in gpu_files))

    def _spawn(self, name: str, cmd: list[str], **kwargs) -> None:
        with open(self.root / "logs" / f"{name}.out", "w") as log:
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kwargs))

    def start(self, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting SLURM daemons and writing /etc/slurm/slurm.conf needs root")
        ensure_installed()
        self._write_config()
        # munged runs as user munge, with its socket folder owned by it
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        for folder in (Path("/var/lib/munge"), Path("/var/log/munge")):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True, user="munge", group="munge")
        self._spawn("munged", ["munged", "--foreground", "--force"], user="munge", group="munge")
        self._wait(lambda: Path("/run/munge/munge.socket.2").exists(), timeout, "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        self._wait(self._node_idle, timeout, "the node to become idle")

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.root / "logs").glob("*"))
                         if p.is_file())
        raise RuntimeError(f"SLURM did not come up (waiting for {what}):\n{logs}")

    def job_ids(self) -> set[str]:
        """Ids of every job slurmctld still remembers (finished ones stay MinJobAge seconds)."""
        out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True,
                             text=True, check=True).stdout
        return set(out.split())

    def job_requests(self) -> dict[str, tuple[str, str]]:
        """Per job id, as slurmctld records them: the job's comment (the executor writes
        ``rule_<rule>...`` there) and its GPU request (tres-per-job: ``gres:gpu:1`` for
        ``--gpus=1``, ``N/A`` for none)."""
        out = subprocess.run(["squeue", "-h", "--states=all", "-O", "JobID:30|,Comment:400|,tres-per-job:100"],
                             capture_output=True, text=True, check=True).stdout
        rows = (line.split("|") for line in out.splitlines() if line.strip())
        return {job.strip(): (comment.strip(), tres.strip()) for job, comment, tres in rows}

    def job_gpus(self) -> dict[str, str]:
        """Per job id, the GRES slurmctld allocated it (``gpu:1(IDX:0)``: one GPU, device 0;
        ``none``), as the controller's prolog recorded them at allocation."""
        if not self.allocations.exists():
            return {}
        return dict(line.split() for line in self.allocations.read_text().splitlines() if line.strip())

    def stop(self) -> None:
        """Stop every daemon started here and remove the config files written here."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for path in (SLURM_CONF, GRES_CONF):
            if path.exists() and MARKER in path.read_text():
                path.unlink()
