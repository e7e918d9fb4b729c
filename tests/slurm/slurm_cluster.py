"""A throwaway single-node SLURM cluster on this machine, for testing ``profiles/slurm`` end to end.

It runs Debian's Slurm (slurmctld, slurmd, slurmdbd with MariaDB, so that ``sacct`` works) as root,
with its files in one temporary folder: its own MariaDB data folder on a free TCP port, its own Slurm
configuration, ports, state and logs, so a MariaDB or Slurm the machine already runs is neither used
nor disturbed. Client commands find the cluster through ``SLURM_CONF`` (see :meth:`SlurmCluster.env`).
munged is the exception: Slurm 22.05 clients only talk to munged on its default socket
(/run/munge), so a munged that already answers there is used as it is, and otherwise one is started
there with the machine's key (/etc/munge/munge.key, created by the munge package).

The node is one machine split into two partitions, ``cpu`` (the default) and ``gpu``, the names
that ``profiles/slurm`` uses, and carries two fake GPUs (``gres.conf``: ``File=/dev/null``) so that
``--gpus``/``--gres`` requests are scheduled and accounted (``AllocTRES`` shows ``gres/gpu``).
The node declares 8 CPUs and 64 GB (``SlurmdParameters=config_overrides``) so that the profile's real
requests fit on a small test machine; nothing enforces them (no cgroups), and the test workflow is
tiny.

Only the daemons this module starts are stopped, by the PIDs it recorded (``<dir>/pids.json``).

Command line (for trying the profile by hand)::

    python tests/slurm/slurm_cluster.py start        # prints the folder and `export SLURM_CONF=...`
    python tests/slurm/slurm_cluster.py stop DIR     # stops the daemons started in DIR, removes DIR
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Debian/Ubuntu packages that provide the daemons and client commands.
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server")
#: Programs the cluster needs, and the package that provides each.
PROGRAMS = {
    "munged": "munge",
    "munge": "munge",
    "unmunge": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "sacct": "slurm-client",
    "sacctmgr": "slurm-client",
    "srun": "slurm-client",
    "slurmdbd": "slurmdbd",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mariadb": "mariadb-server",
}
CLUSTER_NAME = "hemotest"
ACCOUNT = "hemotest"
PARTITIONS = {"cpu": True, "gpu": False}  # name -> default partition
NODE_CPUS = 8
NODE_MEMORY_MB = 64000
FAKE_GPU_FILES = ("/dev/null", "/dev/zero")
LOCK_FILE = Path(tempfile.gettempdir()) / "hemoprofile-slurm-test.lock"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


class ClusterError(RuntimeError):
    """The cluster could not be installed or started (the message says which step and why)."""


def which(program):
    return shutil.which(program, path=SEARCH_PATH)


def missing_programs():
    return [p for p in PROGRAMS if which(p) is None]


def unavailable_reason():
    """Why this machine cannot bring up the test cluster, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root (it installs packages and starts munged, MariaDB and the Slurm daemons)"
    if missing_programs() and which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing_programs())} missing) and apt-get is not available"
    return None


def _run(command, env=None, check=True, timeout=120, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def install_packages(log=print):
    """Install the Debian packages when a program is missing; returns the seconds spent."""
    missing = missing_programs()
    if not missing:
        return 0.0
    start = time.monotonic()
    log(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    # Debian packages start their services from maintainer scripts where an init system runs; the
    # cluster is started by hand below, so block service starts during the install (the usual
    # container policy-rc.d), but only when no policy is in place already.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# written by hemoprofile tests/slurm for the duration of an install\nexit 101\n")
        policy.chmod(0o755)
    try:
        lists = Path("/var/lib/apt/lists")
        if not any(lists.glob("*Packages*")) or _run(install, env=env, check=False, timeout=600).returncode != 0:
            _run(["apt-get", "update", "-q"], env=env, timeout=600)
            _run(install, env=env, timeout=600)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    still_missing = missing_programs()
    if still_missing:
        raise ClusterError(f"after installing {PACKAGES}, still missing: {still_missing}")
    return time.monotonic() - start


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_hardware():
    """NodeName (this host as slurmd knows it) from ``slurmd -C``."""
    out = _run([which("slurmd"), "-C"]).stdout
    match = re.search(r"NodeName=(\S+)", out)
    if not match:
        raise ClusterError(f"slurmd -C printed no NodeName:\n{out}")
    return match.group(1)


class SlurmCluster:
    """Start with :meth:`start`, use :meth:`env` for client commands, end with :meth:`stop`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "etc" / "slurm.conf"
        self.logs = self.root / "log"
        self.pids_file = self.root / "pids.json"
        self.node = None
        self._lock = None

    # -- environment -------------------------------------------------------------------------------

    def env(self, base=None):
        """Environment for client commands (sbatch, sacct, snakemake) that talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        path = SEARCH_PATH if base is None else env.get("PATH", SEARCH_PATH)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), path])
        for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del env[key]  # a job context (SLURM_JOB_ID...) from an outer allocation would confuse the plugin
        return env

    def run(self, *command, check=True, timeout=60):
        """Run a Slurm client command against this cluster."""
        return _run([which(command[0]) or command[0], *command[1:]], env=self.env(), check=check, timeout=timeout)

    # -- start / stop ------------------------------------------------------------------------------

    @classmethod
    def start(cls, log=print):
        reason = unavailable_reason()
        if reason:
            raise ClusterError(reason)
        # One test cluster per machine at a time: they would share munged (see above), and one
        # cluster's stop would end it under the other. A second test run waits here.
        lock = open(LOCK_FILE, "w")
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        if time.monotonic() - waited > 1:
            log(f"waited {time.monotonic() - waited:.0f} s for another SLURM test cluster to stop ({LOCK_FILE})")
        try:
            install_packages(log)
        except BaseException:
            lock.close()
            raise
        root = Path(tempfile.mkdtemp(prefix="hemoprofile-slurm-"))
        root.chmod(0o755)  # munged and mariadbd run as their own users and must reach their folders
        cluster = cls(root)
        cluster._lock = lock
        try:
            cluster._start(log)
        except BaseException:
            cluster.stop(remove=False)
            log(f"cluster start failed; its files are kept in {root}")
            raise
        return cluster

    def _start(self, log):
        started = time.monotonic()
        for sub in ("etc", "log", "state", "spool", "run", "bin"):
            (self.root / sub).mkdir()
        # Inside a job, snakemake-executor-plugin-slurm-jobstep (0.6) starts the rule with `srun` in
        # an environment stripped of every SLURM_* variable, SLURM_CONF included. A real cluster keeps
        # its configuration where srun finds it without one (/etc/slurm, or configless slurmd); this
        # one lives in a temporary folder, so the jobs' PATH (sbatch exports it) gets an srun that
        # puts SLURM_CONF back.
        srun = self.root / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{which("srun")}" "$@"\n')
        srun.chmod(0o755)
        self.node = node_hardware()
        ctld_port, slurmd_port, dbd_port, db_port = free_ports(4)
        self._start_munge()
        db_password = os.urandom(12).hex()
        self._start_mariadb(db_port, db_password)
        self._write_configs(ctld_port, slurmd_port, dbd_port, db_port, db_password)
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"], env=self.env())
        self._wait("slurmdbd answers", lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, "Description=hemoprofile tests", "Organization=tests")
        self.run("sacctmgr", "-i", "add", "user", "root", f"DefaultAccount={ACCOUNT}", check=False)
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"], env=self.env())
        self._wait("slurmctld answers", lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0)
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.node], env=self.env())
        self._wait_node_idle()
        log(f"SLURM test cluster up in {time.monotonic() - started:.0f} s (SLURM_CONF={self.conf})")

    def _start_munge(self):
        """Use the machine's munged when one answers; otherwise start one (Slurm 22.05 clients only
        talk to munged on its default socket, so the cluster cannot have a private one)."""
        if _run(["sh", "-c", f"{which('munge')} -n | {which('unmunge')}"], check=False).returncode == 0:
            return
        user = pwd.getpwnam("munge")
        run_dir = Path("/run/munge")
        run_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(run_dir, user.pw_uid, user.pw_gid)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            _run([which("mungekey"), "--create", f"--keyfile={key}"])
            os.chown(key, user.pw_uid, user.pw_gid)
        munge_dir = self.root / "munge"
        munge_dir.mkdir()
        os.chown(munge_dir, user.pw_uid, user.pw_gid)
        self._spawn(
            "munged",
            [which("munged"), "--foreground", f"--pid-file={munge_dir / 'munged.pid'}",
             f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}"],
            user=user.pw_uid, group=user.pw_gid,
        )
        self._wait("munged answers",
                   lambda: _run(["sh", "-c", f"{which('munge')} -n | {which('unmunge')}"], check=False).returncode == 0)

    def _start_mariadb(self, port, password):
        user = pwd.getpwnam("mysql")
        db_dir = self.root / "mysql"
        (db_dir / "data").mkdir(parents=True)
        for path in (db_dir, db_dir / "data"):
            os.chown(path, user.pw_uid, user.pw_gid)
        socket_path = db_dir / "mysqld.sock"
        _run([which("mariadb-install-db"), "--no-defaults", f"--datadir={db_dir / 'data'}", "--user=mysql",
              "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=300)
        self._spawn(
            "mariadbd",
            [which("mariadbd"), "--no-defaults", f"--datadir={db_dir / 'data'}", f"--socket={socket_path}",
             f"--port={port}", "--bind-address=127.0.0.1", f"--pid-file={db_dir / 'mariadbd.pid'}",
             f"--log-error={self.logs / 'mariadbd.log'}", "--user=mysql", "--skip-name-resolve",
             "--innodb-buffer-pool-size=64M", "--skip-log-bin"],
        )
        client = [which("mariadb"), "--no-defaults", f"--socket={socket_path}", "-u", "root"]
        self._wait("MariaDB answers", lambda: _run([*client, "-e", "SELECT 1"], check=False).returncode == 0)
        _run([*client, "-e",
              f"CREATE USER 'slurm'@'%' IDENTIFIED BY '{password}';"
              "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';"])

    def _write_configs(self, ctld_port, slurmd_port, dbd_port, db_port, db_password):
        r = self.root
        auth = "AuthType=auth/munge\n"
        partitions = "".join(
            f"PartitionName={name} Nodes={self.node} Default={'YES' if default else 'NO'} MaxTime=INFINITE State=UP\n"
            for name, default in PARTITIONS.items()
        )
        self.conf.write_text(
            f"# hemoprofile SLURM test cluster (tests/slurm/slurm_cluster.py); lives in {r}\n"
            f"ClusterName={CLUSTER_NAME}\n"
            f"SlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"{auth}CredType=cred/munge\n"
            f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool'}\n"
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={r / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}\nSlurmdLogFile={self.logs / 'slurmd.log'}\n"
            # no cgroups in a container: track processes by parentage, no task binding
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=5\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            # without a default, a job that asks for no memory is given the whole node
            "DefMemPerCPU=1000\n"
            "MailProg=/bin/true\nReturnToService=2\nSlurmdParameters=config_overrides\n"
            "SchedulerParameters=sched_interval=2\n"
            "GresTypes=gpu\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={dbd_port}\n"
            "AccountingStorageTRES=gres/gpu\n"
            "JobCompType=jobcomp/none\nMinJobAge=300\n"
            # sacct shows the comment (rule and wildcards) that the plugin gives each job
            "AccountingStoreFlags=job_comment\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:{len(FAKE_GPU_FILES)} State=UNKNOWN\n"
            f"{partitions}"
        )
        # A GPU gres needs a device file, or slurmd drops it and the node drains; no GPU is used.
        # Two fake GPUs, so that the two slides' GPU jobs run side by side as on a real GPU node.
        (r / "etc" / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"NodeName={self.node} Name=gpu File={dev}\n" for dev in FAKE_GPU_FILES)
        )
        dbd_conf = r / "etc" / "slurmdbd.conf"
        dbd_conf.write_text(
            f"{auth}DbdAddr=127.0.0.1\nDbdHost={self.node}\nDbdPort={dbd_port}\nSlurmUser=root\n"
            f"PidFile={r / 'run' / 'slurmdbd.pid'}\nLogFile={self.logs / 'slurmdbd.log'}\n"
            "StorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={db_port}\nStorageUser=slurm\nStoragePass={db_password}\n"
            "StorageLoc=slurm_acct_db\n"
        )
        dbd_conf.chmod(0o600)  # slurmdbd refuses a config that others can read (it holds a password)

    def _spawn(self, name, command, env=None, user=None, group=None):
        log = open(self.logs / f"{name}.out", "ab")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            user=user, group=group, extra_groups=[] if user is not None else None, start_new_session=True,
        )
        log.close()
        pids = self._pids()
        pids[name] = {"pid": process.pid, "exe": os.path.basename(command[0])}
        self.pids_file.write_text(json.dumps(pids, indent=1))
        time.sleep(0.2)
        if process.poll() is not None:
            raise ClusterError(f"{name} exited at once ({process.returncode}):\n{self.log_tail(name)}")
        return process

    def _pids(self):
        return json.loads(self.pids_file.read_text()) if self.pids_file.exists() else {}

    def _wait(self, what, ready, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (subprocess.TimeoutExpired, OSError):
                pass
            for name, info in self._pids().items():
                if not _alive(info):
                    raise ClusterError(f"{name} died while waiting for: {what}\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout} s waiting for: {what}\n{self.log_tails()}")

    def _wait_node_idle(self, timeout=60):
        resumed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False).stdout.split()
            if state and all(s == "idle" for s in state):
                return
            if state and any(s.startswith(("drain", "down", "inval")) for s in state) and not resumed:
                # a node that registers before slurmctld finished reading gres can come up drained
                self.run("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
                resumed = True
            time.sleep(0.5)
        node = self.run("scontrol", "show", "node", self.node, check=False).stdout
        raise ClusterError(f"node {self.node} not idle after {timeout} s:\n{node}\n{self.log_tails()}")

    def stop(self, remove=True):
        """Cancel this cluster's jobs, stop the daemons this object started (by PID), remove its files."""
        pids = self._pids()
        if "slurmctld" in pids and _alive(pids["slurmctld"]):
            self.run("scancel", "--user=root", check=False, timeout=30)
        for name in reversed(list(pids)):
            _terminate(pids[name])
        if remove and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # -- diagnostics -------------------------------------------------------------------------------

    def log_tail(self, name, lines=30):
        text = ""
        for path in (self.logs / f"{name}.log", self.logs / f"{name}.out"):
            if path.exists():
                text += f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text or f"(no log for {name})"

    def log_tails(self, lines=15):
        return "\n".join(self.log_tail(name, lines) for name in self._pids())


def _alive(info):
    """Whether the recorded PID is still the process that was started (not a reused PID)."""
    try:
        exe = os.readlink(f"/proc/{info['pid']}/exe")
    except OSError:
        return False
    return os.path.basename(exe).startswith(info["exe"].split("-")[0])


def _terminate(info, timeout=15):
    if not _alive(info):
        return
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(info):
        time.sleep(0.2)
    if _alive(info):
        os.kill(info["pid"], signal.SIGKILL)
    try:
        os.waitpid(info["pid"], 0)  # reap it when this process started it (pytest); else init does
    except ChildProcessError:
        pass


def main(argv):
    if len(argv) >= 1 and argv[0] == "start":
        cluster = SlurmCluster.start()
        print(f"cluster folder: {cluster.root}\nexport SLURM_CONF={cluster.conf}\n"
              f"stop with: {sys.executable} {__file__} stop {cluster.root}")
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        SlurmCluster(Path(argv[1])).stop()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
