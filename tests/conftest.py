"""Shared fixtures: a tiny Market-layout dataset made with PIL, and a tiny run spec."""

from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread per process: tests start several processes (kill/resume, concurrent
# ablations, submitit jobs) on a 2-core machine, and OpenMP threads spinning against each other
# made tiny models 5-20x slower. Set before torch is imported so subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def make_market_folder(root: Path, num_train_ids: int = 6, num_test_ids: int = 4, cams: int = 3,
                       per_cam: int = 2, size_hw: tuple[int, int] = (32, 16), seed: int = 0) -> Path:
    """Write a tiny Market-1501-style dataset whose identities differ by colour pattern, so a
    model can learn something in a few steps. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size_hw
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        (root / split).mkdir(parents=True, exist_ok=True)

    def person(pid: int, cam: int, k: int) -> Image.Image:
        base = np.random.default_rng(pid).integers(0, 255, size=(3, 3), dtype=np.uint8)
        img = np.zeros((h, w, 3), dtype=np.uint8)
        third = h // 3
        for band in range(3):
            img[band * third:(band + 1) * third] = base[band]
        noise = rng.integers(-20, 20, size=img.shape)
        return Image.fromarray(np.clip(img.astype(int) + noise + 10 * cam, 0, 255).astype(np.uint8))

    frame = 0
    for pid in range(1, num_train_ids + 1):
        for cam in range(1, cams + 1):
            for k in range(per_cam):
                frame += 1
                person(pid, cam, k).save(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")
    for pid in range(100, 100 + num_test_ids):
        for cam in range(1, cams + 1):
            for k in range(per_cam):
                frame += 1
                person(pid, cam, k).save(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")
            if cam <= 2:
                frame += 1
                person(pid, cam, 9).save(root / "query" / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")
    # a distractor (pid 0) and a junk image (pid -1) in the gallery, as Market has them
    person(0, 1, 0).save(root / "bounding_box_test" / f"0000_c1s1_{frame + 1:06d}_00.jpg")
    person(999, 2, 0).save(root / "bounding_box_test" / f"-1_c2s1_{frame + 2:06d}_00.jpg")
    return root


TINY_SPEC = """
profile: cpu
model: {backbone: resnet18, pretrained: false, last_stride: 2, neck: plain}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 3, milestones: [2], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


# TINY_SPEC with timm's 0.5M-parameter test ResNet instead of resnet18: a study trains several
# runs, so each must take seconds on a shared 2-core machine.
STUDY_SPEC = TINY_SPEC.replace("backbone: resnet18", 'backbone: "timm:test_resnet"')


# A 2-epoch BoT on timm's test ResNet, for tests that patch a spec (tricks, step lists, presets):
# the tiny_bot_yaml fixture.
TINY_BOT_YAML = """
profile: cpu
model: {backbone: "timm:test_resnet", pretrained: false}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 2, milestones: [2], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


@pytest.fixture(scope="session")
def tiny_bot_yaml() -> str:
    return TINY_BOT_YAML


# A 2-epoch MGN (G/P2/P3 on timm's test ResNet, 8-d reductions): the tiny_mgn_yaml fixture.
TINY_MGN_YAML = """
profile: cpu
model: {arch: mgn, backbone: "timm:test_resnet", pretrained: false, reduction_dim: 8}
data: {train: tiny, test: [tiny], image_size: [48, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 0}
loss:
  terms:
    - {kind: ce, reads: "logits_*", combine: sum}
    - {kind: triplet, reads: [f_g, f_p2, f_p3], combine: sum, margin: 1.2}
optim: {name: sgd, base_lr: 0.01}
schedule: {max_epochs: 2, milestones: [2], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


@pytest.fixture(scope="session")
def tiny_mgn_yaml() -> str:
    return TINY_MGN_YAML


@pytest.fixture(scope="session")
def study_spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny-study.yaml"
    path.write_text(STUDY_SPEC)
    return path


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    return make_market_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def market_folder_factory():
    """``make_market_folder`` for tests (``--import-mode=importlib`` keeps conftest off sys.path)."""
    return make_market_folder


def _same_numbers(csv_text: str, old_file: Path) -> bool:
    """True when every column of ``old_file`` is in ``csv_text`` with the same cells (new columns may follow)."""
    import io

    import pandas as pd

    new = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    old = pd.read_csv(old_file, dtype=str, keep_default_na=False)
    missing = [c for c in old.columns if c not in new.columns]
    assert not missing, f"columns gone from the report: {missing}"
    assert new[list(old.columns)].equals(old), new[list(old.columns)].compare(old)
    return True


@pytest.fixture
def same_numbers():
    """Compare a report CSV with one written by older code: every old column kept, cell for cell."""
    return _same_numbers


@pytest.fixture
def old_project(tmp_path, monkeypatch, market_folder_factory):
    """``old_project(name)``: tests/fixtures/<name> (a database + runs written by older code) copied to a
    temporary project folder made the current one, with the two data folders its runs trained on
    regenerated byte for byte (see the fixtures' README.md)."""
    import shutil

    def make(name: str) -> Path:
        work = tmp_path / "project"
        shutil.copytree(Path(__file__).resolve().parent / "fixtures" / name, work)
        market_folder_factory(work / "data" / "tiny", num_train_ids=6, num_test_ids=40, cams=3, per_cam=2)
        market_folder_factory(work / "data" / "tiny2", num_train_ids=6, num_test_ids=40, cams=3, per_cam=2, seed=1)
        monkeypatch.chdir(work)
        monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
        return work

    return make


# --------------------------------------------------------------------------- real services
# A PostgreSQL server and a one-node Slurm cluster, started by the test session itself in
# temporary folders and stopped at its end (docs/services.md). Debian's packages are installed by
# scripts/test_services.sh (`make test` runs it; a fixture runs it too when pytest is started
# directly) as root or with passwordless sudo. Where a service cannot be had, the tests that need
# it are skipped with the exact reason (listed at the end of the run: -rs in setup.cfg).

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "test_services.sh"
INSTALL_TIMEOUT_S = 900
SERVICE_USER = "postgres"  # PostgreSQL refuses to run as root; Debian's package creates this user


def _session_is_dead(pid_file: Path) -> bool:
    """True when the test session that wrote ``pid_file`` is gone (its services can be stopped);
    False while it runs, or when the file cannot be read (then leave its services alone)."""
    try:
        os.kill(int(pid_file.read_text()), 0)
        return False  # that session is still running
    except ProcessLookupError:
        return True
    except (ValueError, OSError):
        return False


def _install_service(service: str) -> str:
    """``scripts/test_services.sh SERVICE`` (it never fails); what it said, for a skip reason."""
    import subprocess

    try:
        done = subprocess.run(["bash", str(SERVICES_SCRIPT), service], capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{SERVICES_SCRIPT.name} {service}: {err}"
    return " ".join((done.stdout + done.stderr).split())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def _postgres_bindir() -> Path | None:
    """Debian's /usr/lib/postgresql/<newest>/bin, else the folder of an initdb on PATH."""
    import shutil

    def version(initdb: Path) -> int:
        name = initdb.parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throw-away PostgreSQL cluster: initdb in a temporary folder, trust auth, 127.0.0.1:port.

    As root the cluster belongs to the ``postgres`` user (else ``nobody``): PostgreSQL refuses to
    run as root. Its folder is made outside pytest's (root-only) temporary tree for that reason.
    """

    SUPERUSER = "reidbench"
    PREFIX = "reidbench-pg-"

    def __init__(self, bindir: Path) -> None:
        import pwd
        import tempfile

        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix=self.PREFIX))
        (self.root / "session.pid").write_text(str(os.getpid()))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.run_as: dict = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                account = pwd.getpwnam("nobody")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout: float = 120) -> None:
        import subprocess

        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root, stdin=subprocess.DEVNULL, **self.run_as)
        if done.returncode != 0:
            said = " ".join((done.stderr or done.stdout).split())[-400:]
            raise RuntimeError(f"{args[0]} exited {done.returncode}: {said}; server log: {_tail(self.log)}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            # A scratch server: no durability work, enough connections for the multi-process tests.
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\nmax_connections = 300\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        import shutil

        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        except Exception:
            pass  # never started, or already gone: the folder goes anyway
        shutil.rmtree(self.root, ignore_errors=True)

    def stop_abandoned(self) -> None:
        """Stop the servers of earlier test sessions that were killed before their teardown."""
        import tempfile

        for session in Path(tempfile.gettempdir()).glob(self.PREFIX + "*/session.pid"):
            if not _session_is_dead(session):
                continue
            old = object.__new__(PostgresServer)
            old.bindir, old.root, old.data, old.log, old.run_as = (
                self.bindir, session.parent, session.parent / "data", session.parent / "server.log", self.run_as)
            old.stop()

    def url(self, database: str) -> str:
        # A plain postgresql:// URL on purpose: the store picks the installed driver (psycopg 3).
        return f"postgresql://{self.SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.SUPERUSER, dbname="postgres",
                             autocommit=True) as con:
            con.execute(statement)

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import uuid

        name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # ends connections left open


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL server for the whole session, or a skip that says why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests: psycopg is not installed (pip install 'reidbench[postgres]')")
    bindir = _postgres_bindir()
    said = ""
    if bindir is None:
        said = _install_service("postgres")
        bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL tests: no PostgreSQL server binaries (initdb) and none could be installed: {said}")
    server = PostgresServer(bindir)
    server.stop_abandoned()
    try:
        server.start()
    except Exception as err:  # noqa: BLE001 - every reason becomes the skip reason
        server.stop()
        pytest.skip(f"PostgreSQL tests: the server in {bindir} could not be started: {err}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh, empty results database: an SQLite file, then a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


def _run_sql(url: str, statement: str, **params):
    """One statement on the database at ``url`` (any dialect), outside the store's code: the rows,
    or the number of rows changed."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from reidbench.harness.store.engine import driver_url

    engine = create_engine(driver_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else result.rowcount
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def run_sql():
    """``run_sql(url, "SELECT ...", name=value)``: raw SQL beside the store, on SQLite or PostgreSQL."""
    return _run_sql


def _copy_sqlite_database(sqlite_path: Path, url: str) -> None:
    """Lay an SQLite results database (a fixture written by older code) into the empty PostgreSQL
    database ``url`` as that code would have created it there: its own DDL with PostgreSQL's types
    (SERIAL ids, TIMESTAMP for DATETIME), the same rows and ids, the id sequences past them."""
    import re
    import sqlite3

    from sqlalchemy import MetaData, create_engine, text

    from reidbench.harness.store.engine import driver_url

    with sqlite3.connect(sqlite_path) as con:
        ddl = {(kind, name): sql for kind, name, sql in con.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'")}
    source = create_engine(f"sqlite:///{sqlite_path}")
    target = create_engine(driver_url(url))
    try:
        old, new = MetaData(), MetaData()
        old.reflect(source)
        # tables in foreign-key order (an upgraded file lists a referencing table first), then indexes
        ordered = [ddl["table", t.name] for t in old.sorted_tables] + [
            sql for (kind, _), sql in ddl.items() if kind == "index"]
        with target.begin() as conn:
            for sql in ordered:
                sql = re.sub(r"\bid INTEGER NOT NULL", "id SERIAL NOT NULL", sql)
                sql = re.sub(r"\bBLOB\b", "BYTEA", sql)  # schema 3's per-query results
                conn.exec_driver_sql(re.sub(r"\bDATETIME\b", "TIMESTAMP WITHOUT TIME ZONE", sql))
        new.reflect(target)
        with source.connect() as src, target.begin() as dst:
            for table in old.sorted_tables:
                rows = [dict(row._mapping) for row in src.execute(table.select())]
                if rows:
                    dst.execute(new.tables[table.name].insert(), rows)
                if "id" in table.c:
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                     f"(SELECT coalesce(max(id), 0) + 1 FROM {table.name}), false)"))
    finally:
        source.dispose()
        target.dispose()


@pytest.fixture(scope="session")
def copy_sqlite_database():
    """``copy_sqlite_database(path, postgresql_url)``: an old SQLite fixture database laid into PostgreSQL."""
    return _copy_sqlite_database


SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun")


def _slurm_tool(name: str) -> str | None:
    import shutil

    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class SlurmCluster:
    """A one-node Slurm cluster in a temporary folder: munged (own key and socket), slurmctld and
    slurmd (own slurm.conf, state and spool folders, free local ports), each a child process.

    Chosen to run in a container or VM without systemd or cgroup delegation: proctrack/linuxproc,
    task/none, no accounting storage (so no slurmdbd; reidbench watches jobs with squeue),
    ReturnToService=2, the daemons run in the foreground (-D) as this user (SlurmUser/SlurmdUser).
    ``env``: the environment whose Slurm commands talk to this cluster (SLURM_CONF).
    """

    PARTITION = "reidbench"

    def __init__(self, root: Path) -> None:
        import getpass
        import socket

        self.root = root
        self.node = socket.gethostname().split(".")[0]  # slurmctld must run on SlurmctldHost
        self.user = getpass.getuser()
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.procs: list = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.env["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

    def _daemon(self, *args: str) -> None:
        """Start ``args[0]`` in the foreground as a child; its output goes to log/<name>.out."""
        import subprocess

        with open(self.root / "log" / f"{args[0]}.out", "ab") as out:
            self.procs.append(subprocess.Popen([_slurm_tool(args[0]) or args[0], *args[1:]], stdout=out,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                               cwd=self.root))

    def _said(self, name: str) -> str:
        """The end of what daemon ``name`` logged (its log file, else its output)."""
        log = self.root / "log" / f"{name}.log"
        return f"{log.name}: {_tail(log if log.exists() else log.with_suffix('.out'))}"

    def _wait(self, what: str, ready, timeout_s: float, name: str) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [Path(p.args[0]).name for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited; {self._said(dead[0])}")
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s; {self._said(name)}")

    @staticmethod
    def stop_abandoned() -> None:
        """Stop the daemons of earlier test sessions that were killed before their teardown."""
        import signal
        import tempfile

        for session in Path(tempfile.gettempdir()).glob("pytest-of-*/pytest-*/slurm*/session.pid"):
            if not _session_is_dead(session):
                continue
            root = session.parent
            for pid_file in (root / "slurmd.pid", root / "slurmctld.pid", root / "munge" / "munged.pid"):
                try:
                    pid = int(pid_file.read_text().split()[0])
                    if pid_file.stem in Path(f"/proc/{pid}/cmdline").read_text():  # not a recycled pid
                        os.kill(pid, signal.SIGTERM)
                except (OSError, ValueError, IndexError):
                    pass
            session.unlink(missing_ok=True)

    def start(self) -> None:
        (self.root / "session.pid").write_text(str(os.getpid()))
        for folder in ("munge", "state", "spool", "log"):
            (self.root / folder).mkdir(mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._daemon("munged", "--foreground", "--force", f"--socket={self.socket}", f"--key-file={key}",
                     f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'seed'}",
                     f"--log-file={self.root / 'log' / 'munged.log'}")
        self._wait("munged", self.socket.exists, 20, "munged")
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""\
ClusterName=reidbench-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={self.user}
SlurmdUser={self.user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={self.PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        self._daemon("slurmctld", "-D", "-c", "-i")
        self._daemon("slurmd", "-D")
        self._wait("the node", lambda: self.node_state() == "idle", 60, "slurmd")

    def command(self, *args: str, timeout: float = 60):
        import subprocess

        return subprocess.run([_slurm_tool(args[0]) or args[0], *args[1:]], capture_output=True, text=True,
                              timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)

    def node_state(self) -> str:
        done = self.command("sinfo", "--noheader", "--Node", "--format=%T")
        return done.stdout.strip() if done.returncode == 0 else ""

    def active_jobs(self) -> list[str]:
        """Ids (array tasks one by one) of the pending and running jobs."""
        return self.command("squeue", "--noheader", "--array", "--format=%i").stdout.split()

    def states(self, array_id: str) -> dict[str, str]:
        """Every task of a job array (finished ones too) → its state."""
        done = self.command("squeue", "--noheader", "--array", "--states=all", "--format=%i %T", f"--jobs={array_id}")
        return dict(line.split() for line in done.stdout.splitlines() if line.strip())

    def stop(self) -> None:
        import time

        jobs = self.active_jobs() if self.procs else []
        if jobs:
            self.command("scancel", *jobs)
            deadline = time.monotonic() + 20
            while self.active_jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except Exception:  # noqa: BLE001 - it must go, one way or the other
                proc.kill()
                proc.wait(timeout=15)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node Slurm cluster for the session, or a skip that says why there is none."""
    missing = [tool for tool in SLURM_TOOLS if _slurm_tool(tool) is None]
    said = ""
    if missing:
        said = _install_service("slurm")
        missing = [tool for tool in SLURM_TOOLS if _slurm_tool(tool) is None]
    if missing:
        pytest.skip(f"Slurm tests: {', '.join(missing)} not found and could not be installed "
                    f"(Debian: slurm-wlm, munge): {said}")
    SlurmCluster.stop_abandoned()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception as err:  # noqa: BLE001 - every reason becomes the skip reason
        cluster.stop()
        pytest.skip(f"Slurm tests: a one-node cluster could not be started here: {err}")
    yield cluster
    cluster.stop()
