"""The embedded default's Ray on this machine: start it, find its processes, stop them.

`kairos up` starts each Ray node with `ray start` in a process session of its own and records
the sessions, the ports and the start time in $KAIROS_HOME/run.json (default ~/.kairos). Every
process Ray starts for that node (GCS, raylet, dashboard, agents, workers) stays in its session,
and a random token of the run's is in the environment `ray start` passes on to them: a recorded
session is the run's while one of its processes carries the token (a session id alone proves
nothing: once its processes are gone, a terminal's session can get it, after a reboot say). So
`kairos down` stops exactly those processes, whatever state they are in: never `ray stop`
(it stops every Ray on the machine: a test's, a bench's, another Kairos's). It asks Ray to stop
the runtime first (gateways drained) only when the GCS answers and a raylet lives, and then in
a child process with a bound (graceful.py).

One node (the default) runs on loopback only: Ray 2.x turns `--node-ip-address=127.0.0.1` into
the machine's address and its GCS listens on every interface, except in its single-machine
mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS and Windows), where every Ray
server binds 127.0.0.1. That mode refuses `ray start --address`, so `--nodes N` (N > 1) runs Ray
on the machine's address, as Ray's multi-node clusters require. Ray's own tools and drivers
reach the loopback-only Ray with the same environment (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
RAY_AUTH_MODE=token ray status --address 127.0.0.1:6380`); without it they look for the GCS on
the machine's address and retry for minutes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterator

import psutil

from kairos.cluster.cli import private, raytemp
from kairos.cluster.raytuning import RAY_SETTINGS
from kairos.cluster.secret_files import SecretFileError, check_secret_file

HOME_ENV = "KAIROS_HOME"
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": one node, every Ray server on loopback
RUN_FILE = "run.json"
LOCK_FILE = "up.lock"
START_LOG = "ray-start.log"
LOOPBACK = "127.0.0.1"
# storage.providers' name for it: imported from there, it brought in cluster.settings, which
# raises on any bad KAIROS_* value, and `kairos down` reads none (a test keeps the two equal)
STORE_PASSWORD_FILE_ENV = "KAIROS_STORE_PASSWORD_FILE"
TOKEN_ENV = "KAIROS_RUN_TOKEN"  # the run's token, in the environment of every process it starts
RAY_PORT = 6380  # the GCS port (6379 is left to Redis)
DASHBOARD_PORT = 8265
# `ray start`'s --min-worker-port/--max-worker-port defaults: each Ray worker (an actor: a shard,
# a gateway) serves on one of these, taken by whichever starts first
RAY_WORKER_PORTS = (10002, 19999)
RAY_START_TIMEOUT_S = 180.0  # one `ray start` (about 10 s on a quiet 2-core machine)
# `kairos up` joining the Ray it started, which answers within seconds: past this, it is stopped
# (ray.init retries a GCS that does not answer without end)
RAY_INIT_TIMEOUT_S = 120.0
TERM_GRACE_S = 5.0  # then SIGTERM to Ray's processes, SIGKILL to what is left after this
KILL_WAIT_S = 3.0
# what the processes of a `kairos up` run, by name or command line: Ray's servers, its workers'
# titles (ray::Shard), its scripts (.../ray/dashboard/agent.py), `ray start`, Kairos's console
RAY_OR_KAIROS = re.compile(r"\bgcs_server\b|\braylet\b|\bray::|/ray/|\bray start\b|\bkairos\b")


def home() -> Path:
    return Path(os.path.expanduser(os.environ.get(HOME_ENV, private.DEFAULT_HOME)))


def own_home() -> Path:
    """$KAIROS_HOME for `kairos up`: made 0700 if missing, made 0700 if wider where it is
    Kairos's own and no link; SystemExit otherwise, or when it is not this user's own directory
    (private.own_home)."""
    return private.own_home(home(), f"${HOME_ENV}")


def checked_home() -> Path:
    """$KAIROS_HOME, made 0700 if missing, its mode left as it is; SystemExit when it is not a
    directory of this user's that no one else may write (private.own_dir)."""
    return private.own_dir(home(), f"${HOME_ENV}")


def own_ray_temp_dir() -> str:
    """Ray's temp dir in $KAIROS_HOME, `kairos up`'s default where Ray's socket paths fit in it
    (raytemp.py)."""
    return os.path.join(home().absolute(), "ray", "tmp")


@dataclasses.dataclass
class Run:
    """What `kairos up` started, as recorded in $KAIROS_HOME/run.json."""
    ray_address: str  # the GCS, host:port
    temp_dir: str  # Ray's --temp-dir
    sessions: list[int]  # the process sessions of the `ray start` calls, head first
    started: float  # time.time() before the first `ray start`
    loopback: bool  # Ray's single-machine mode: everything on 127.0.0.1
    auth_mode: str  # RAY_AUTH_MODE of Ray's processes and of the drivers that join it
    nodes: int = 1
    gateways: list[str] = dataclasses.field(default_factory=list)  # host:port to connect to
    dashboard: str = ""
    store: str = ""
    console: str = ""  # the agent's console's URL ("": none)
    console_keys: str = ""  # where the keys agents sign in with are (a path, never a key)
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(16))  # TOKEN_ENV
    session: str = ""  # the name of Ray's session directory (raytemp.session_of; "": unknown)

    @property
    def ray_port(self) -> int:
        return int(self.ray_address.rpartition(":")[2])


def read_run() -> Run | None:
    """The run recorded in $KAIROS_HOME, a directory of this user's that no one else may write
    (its mode left as it is: the record is 0600 itself), in a file of this user's (SystemExit
    otherwise); None when none is."""
    try:
        private.check_own_dir(home(), f"${HOME_ENV}")
        data = json.loads(private.read_own(home() / RUN_FILE))
        return Run(**{"token": "", **data})  # "": recorded before runs had tokens
    except FileNotFoundError:
        return None
    except OSError as exc:  # KAIROS_HOME a file, run.json a directory, ...
        raise SystemExit(f"error: {home() / RUN_FILE}: {exc.strerror} (${HOME_ENV} must be a "
                         f"directory, its {RUN_FILE} a file)") from None
    except (ValueError, TypeError) as exc:  # not ours, or from another version
        raise SystemExit(f"error: {home() / RUN_FILE} is not a Kairos run record ({exc}); "
                         f"remove it once no Kairos runs on this KAIROS_HOME") from None


def write_run(run: Run) -> None:
    private.write_own(checked_home() / RUN_FILE, json.dumps(dataclasses.asdict(run), indent=1))


def forget() -> None:
    with contextlib.suppress(FileNotFoundError):
        (home() / RUN_FILE).unlink()


@contextlib.contextmanager
def up_lock() -> Iterator[None]:
    """One `kairos up` or `down` at a time per KAIROS_HOME; a second one fails at once."""
    try:
        f = os.fdopen(private.lock_file(checked_home() / LOCK_FILE))
    except OSError as exc:
        raise SystemExit(f"error: {home() / LOCK_FILE}: {exc.strerror} (${HOME_ENV} must be a "
                         f"directory this user may write, {LOCK_FILE} a file)") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"error: another `kairos up` or `kairos down` is running on "
                             f"{home()}") from None
        yield


# -- Ray's environment -----------------------------------------------------------------------

def ray_env(loopback: bool, auth_mode: str, token: str = "") -> dict[str, str]:
    """The environment of Ray's processes (workers inherit it) and of the drivers that join;
    `token`: the run's (Run.token), which marks the processes as the run's."""
    env = {**RAY_SETTINGS, **os.environ}  # the operator's own value of one of them wins
    env.pop("RAY_ADDRESS", None)  # the addresses are always given explicitly
    env.pop(TOKEN_ENV, None)  # never another run's
    if env.get(STORE_PASSWORD_FILE_ENV):  # read where Ray's workers run, not in this directory
        env[STORE_PASSWORD_FILE_ENV] = os.path.abspath(env[STORE_PASSWORD_FILE_ENV])
    if token:
        env[TOKEN_ENV] = token
    # Every node runs on this machine: shards serve their data path on loopback. Ray runs
    # workers at nice 15 by default, behind any batch job on the machine; Kairos's actors are
    # the latency-bound service, so they run at 0.
    env.setdefault("KAIROS_DATA_HOST", LOOPBACK)
    # every node is started before the controller: after a `kairos up` with fewer --nodes than
    # the store's last run, waiting for more to rejoin would only stall each start
    env.setdefault("KAIROS_TAKEUP_NODES_WAIT_S", "0")
    env.setdefault("RAY_worker_niceness", "0")
    env["RAY_AUTH_MODE"] = auth_mode
    if loopback:
        env[SINGLE_MACHINE] = "0"
    else:
        env.pop(SINGLE_MACHINE, None)
    return env


@contextlib.contextmanager
def single_machine() -> Iterator[None]:
    """Ray's single-machine mode (every server on loopback) for a Ray this process starts
    itself (ray.cluster_utils, the tests' and the bench's). Ray reads the variable once, when
    it is imported: set after `import ray`, it reached the processes started but not the
    driver, which gave them the machine's address, and the GCS listened on every interface.
    So Ray's constant is set too; both are put back afterwards."""
    from ray._private import ray_constants

    saved = os.environ.get(SINGLE_MACHINE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


AUTH_MODES = ("token", "disabled")  # RAY_AUTH_MODE's values; Ray reads any other as disabled


class BadAuthMode(ValueError):
    """A RAY_AUTH_MODE that is not one of AUTH_MODES."""


def auth_mode() -> str:
    """Ray's token authentication unless the user chose otherwise (RAY_AUTH_MODE). Ray takes
    the token from RAY_AUTH_TOKEN, else from the file RAY_AUTH_TOKEN_PATH names, else from
    ~/.ray/auth_token: a file that others may read is refused (SecretFileError), as Kairos's own
    secrets' files are, and one is made the first time, as Ray does for a cluster `ray.init()`
    starts, but readable by this user only (Ray's own writes it under the umask). The mode as
    Ray reads it, whatever its case (TOKEN is token mode); unset or blank: token. Ray takes
    any other value (`tokens`, `on`) for no authentication at all: BadAuthMode."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower() or "token"
    if mode not in AUTH_MODES:
        raise BadAuthMode(
            f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']!r} is neither token nor disabled: Ray "
            f"would take it for disabled and run without authentication. Unset it (token, the "
            f"default) or set it to token; disabled turns Ray's authentication off")
    if mode != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return mode
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        check_secret_file(path, "Ray's authentication token")
    except SecretFileError as exc:  # older Kairos left it 0644: every upgrade meets this
        raise SecretFileError(
            f"{exc}; or, as others may have read it, delete it and `kairos up` makes a new one "
            f"(restart any Ray cluster that used it); or set RAY_AUTH_TOKEN instead") from None
    if not os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700)
        # created with its mode: never readable by others, not even for a moment
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_hex(32))  # as `ray get-auth-token --generate` makes one
    return mode


def _ray_cli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class AddressUnusable(Exception):
    """A host this machine cannot listen on: a name that does not resolve, an address that is
    not one of this machine's."""


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port (host: an IPv4 or IPv6 address, or a name;
    port 0: any free one); ValueError for a port outside 0-65535 (getaddrinfo would take it
    modulo 65536), AddressUnusable for a host that is not this machine's or does not resolve."""
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} is out of range (0-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressUnusable(f"cannot resolve host {host!r} ({exc})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise AddressUnusable(f"cannot listen on {host} port {port}: {exc.strerror}") \
                from None
    return True


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself listens on TCP `port`."""
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections("inet"))
    except psutil.Error:  # gone
        return False


# -- start -----------------------------------------------------------------------------------

class StartFailed(Exception):
    pass


def start_ray(run: Run, dashboard_port: int | None) -> None:
    """`ray start` the head and the other nodes of `run` (its sessions are filled in and
    recorded as each starts, so that `kairos down` finds them even if this is interrupted)."""
    env = ray_env(run.loopback, run.auth_mode, run.token)
    head = ["--head", f"--port={run.ray_port}", f"--ray-client-server-port={free_port()}",
            "--dashboard-agent-listen-port=0"]  # 0: any free port (52365 is Ray's default)
    if run.loopback:
        head.append(f"--node-ip-address={LOOPBACK}")
    if dashboard_port is None:
        head.append("--include-dashboard=false")
    else:
        head += ["--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
                 f"--dashboard-port={dashboard_port}"]
    log = home() / START_LOG
    with private.fresh_log(log) as err:  # this run's output only: its last lines are said
        _ray_start(run, head, env, err)
        for _ in range(run.nodes - 1):
            _ray_start(run, [f"--address={run.ray_address}", "--dashboard-agent-listen-port=0"],
                       env, err)


def _ray_start(run: Run, args: list[str], env: dict[str, str], err: IO[str]) -> None:
    log = home() / START_LOG
    process = subprocess.Popen(
        [_ray_cli(), "start", f"--temp-dir={run.temp_dir}", "--disable-usage-stats", *args],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        start_new_session=True)  # its session holds every process of this node
    run.sessions.append(process.pid)
    write_run(run)
    try:
        code = process.wait(timeout=RAY_START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StartFailed(f"`ray start` did not finish in {RAY_START_TIMEOUT_S:.0f} s; "
                          f"its output is in {log}") from None
    finally:  # whatever came of it (^C too): the session the head's made, for `kairos down`
        if run.sessions == [process.pid]:
            run.session = raytemp.session_of(run.temp_dir, process.pid, run.started,
                                              time.time())
            write_run(run)
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise StartFailed("`ray start` failed:\n    " + "\n    ".join(lines[-8:])
                          + f"\n(all of its output is in {log})")


# -- find and stop ---------------------------------------------------------------------------

def processes(run: Run, proven: set[int] | None = None) -> list[psutil.Process]:
    """The live processes of the run's sessions that hold a process carrying the run's token
    (the GCS, the raylets and the console do; Ray's workers and agents do not show theirs: their
    process titles overwrite /proc/PID/environ). Only a process in the session can have made
    another one in it, and an id is not reused while its session has a process, so the carrier
    vouches for the whole session. `proven`, filled in: sessions found to be the run's before,
    which stay so for the seconds of one `kairos down` (their ids come back only after the pid
    counter wraps past them): the workers a dying raylet starts are still stopped."""
    members = _members(run)
    if not run.token:
        return [proc for proc in _since(run, members) if _ray_or_kairos(proc)]
    proven = set() if proven is None else proven
    proven.update(sid for sid, procs in members.items()
                  if any(_carries(proc, run.token) for proc in procs))
    return [proc for sid in proven for proc in members.get(sid, [])]


def strangers(run: Run) -> list[int]:
    """For a record without a token: the processes of its sessions, started since it, that
    `processes` leaves alone because their command lines are neither Ray's nor Kairos's."""
    if run.token:
        return []
    return [proc.pid for proc in _since(run, _members(run)) if not _ray_or_kairos(proc)]


def _members(run: Run) -> dict[int, list[psutil.Process]]:
    sessions = set(run.sessions)
    members: dict[int, list[psutil.Process]] = {}
    me = psutil.Process()  # and its shell: a reused session id may be this very one's
    ours = {me.pid, *(p.pid for p in me.parents())}
    for proc in psutil.process_iter(["create_time", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.pid not in ours and (
                    sid := os.getsid(proc.pid)) in sessions:
                members.setdefault(sid, []).append(proc)
        except (psutil.Error, OSError):
            continue
    return members


def _carries(proc: psutil.Process, token: str) -> bool:
    try:
        return proc.environ().get(TOKEN_ENV) == token
    except psutil.Error:  # gone, or another user's (whose environment is not readable)
        return False


def _since(run: Run, members: dict[int, list[psutil.Process]]) -> list[psutil.Process]:
    """A record an older `kairos up` wrote, without a token (its Kairos may still run): the
    processes of its sessions started since it, if the machine has not restarted since. A
    session id reused within the same boot still passes: `processes` then takes only those
    that run Ray or Kairos."""
    if run.started < psutil.boot_time():
        return []
    return [proc for procs in members.values() for proc in procs
            if proc.info["create_time"] >= run.started - 1.0]


def _ray_or_kairos(proc: psutil.Process) -> bool:
    try:
        return bool(RAY_OR_KAIROS.search(" ".join([proc.name(), *proc.cmdline()])))
    except psutil.Error:
        return False


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _wait(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def name_of(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def stop(run: Run) -> tuple[int, list[int]]:
    """terminate() the run, then, once none of its processes is left, forget_stopped(); one that
    would not stop keeps its record, for `kairos down` to try again (Ray's address file is
    removed all the same). (the processes stopped, the ids of those that would not die)."""
    count, stuck = terminate(run)
    if stuck:
        raytemp.forget_ray_address(run.temp_dir, run.ray_port)
    else:
        forget_stopped(run)
    return count, stuck


def forget_stopped(run: Run) -> None:
    """For a run none of whose processes is left: remove Ray's address file when it names the
    run's Ray, the session directory that Ray made in its temp dir (raytemp.py; none for a
    record without its name), and its record."""
    raytemp.forget_ray_address(run.temp_dir, run.ray_port)
    raytemp.remove_session(run.temp_dir, run.session)
    forget()


def terminate(run: Run) -> tuple[int, list[int]]:
    """Stop every process of the run's sessions: SIGTERM (the GCS last, as `ray stop` does:
    the others would otherwise spin reconnecting to it), SIGKILL after a grace period.
    (the processes stopped, the ids of those that would not die)."""
    stopped: set[int] = set()
    left: list[psutil.Process] = []
    proven: set[int] = set()
    for _ in range(3):  # a raylet may start a worker while it is being stopped
        procs = processes(run, proven)
        if not procs:
            break
        stopped.update(p.pid for p in procs)
        gcs = [p for p in procs if name_of(p) == "gcs_server"]
        rest = [p for p in procs if p not in gcs]
        _signal(rest, signal.SIGTERM)
        rest = _wait(rest, TERM_GRACE_S)
        _signal(gcs, signal.SIGTERM)
        left = _wait(gcs, 1.0) + rest
        _signal(left, signal.SIGKILL)
        left = _wait(left, KILL_WAIT_S)
    return len(stopped), [p.pid for p in left]
