"""Running as a normal user, nothing runs as root (docs/reliability.md).

A real fleet (supervisord, Nginx, two Gunicorn pocketsphinx instances, the
poller) started and driven by an unprivileged user: `nobody` through setpriv
(no supplementary groups, no capabilities) when the tests run as root, as in
CI; the current user otherwise. Every fleet process has that uid and gid
(real, effective, saved, filesystem) and no capability, its Python processes
run on this interpreter; nginx.conf has no `user` directive and no path outside the
run folder, no process holds a file open outside the user's folders, no log
reports a refused permission, the run folder is all the user's; Nginx
answers a transcription with the right text; `fleet.py status` and `stop`
work as that user, and the stop leaves no process behind.

Started by root, the user must reach the interpreter, the virtualenv and the
repository, wherever the clone is: a folder on the way it cannot search
(CI's /root is 0700; this machine's Python lives in /root/.pyenv) gets the
search bit for that user's class while the fleet runs, and its mode back
after. Without it supervisord cannot start, and fleet.py, which setpriv
starts directly, runs on Debian's libpython and standard library behind
the virtualenv's back. The recordings need no access: the test sends them."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from fleet_harness import CLIP, Fleet, fleet_processes
from machine import REPO, instance_processes, require, require_tool, wait_for
from speech import normalize_english

pytestmark = pytest.mark.fleet

# What pocketsphinx hears in CLIP (cards001.wav; ../shared/audio/cards.transcription).
CLIP_TEXT = "ten of clubs"
# Log lines that mean something was refused to a non-root fleet.
REFUSALS = re.compile(r"Permission denied|Operation not permitted|\[emerg\]|\[alert\]|\"user\" directive")


@dataclass(frozen=True)
class Account:
    """Who runs the fleet, and the command prefix that runs a program as them."""
    name: str
    uid: int
    gid: int
    groups: frozenset[int]
    prefix: tuple[str, ...]


def unprivileged_account() -> Account:
    if os.geteuid() != 0:
        return Account(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid(), frozenset(os.getgroups()), ())
    entry = next((e for e in pwd.getpwall() if e.pw_name == "nobody"), None)
    require(entry is not None, "no user `nobody` to run the fleet as")
    # --clear-groups drops root's groups (group 0 among them); leaving uid 0, every capability.
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, frozenset(),
                   (require_tool("setpriv"), f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"))


def search_bit(folder: Path, account: Account) -> int:
    """The execute bit that decides whether `account` may enter `folder`."""
    info = folder.stat()
    owner, group = info.st_uid == account.uid, info.st_gid in {account.gid, *account.groups}
    return stat.S_IXUSR if owner else stat.S_IXGRP if group else stat.S_IXOTH


def closed_folders(paths: list[Path], account: Account) -> list[Path]:
    """Folders on the way to `paths`, symlinks followed, that `account` cannot search."""
    closed: list[Path] = []
    for path in paths:
        for route in (path.absolute(), path.resolve()):
            for folder in [*reversed(route.parents), route]:
                if folder.is_dir() and not folder.stat().st_mode & search_bit(folder, account):
                    closed += [folder] if folder not in closed else []
    return closed


@contextlib.contextmanager
def searchable(paths: list[Path], account: Account) -> Iterator[None]:
    """Each closed folder on the way to `paths` searchable by `account` (its
    class's execute bit only: nothing becomes listable), then its mode back."""
    modes = {folder: stat.S_IMODE(folder.stat().st_mode) for folder in closed_folders(paths, account)}
    try:
        for folder, mode in modes.items():
            folder.chmod(mode | search_bit(folder, account))
        yield
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)


class UnprivilegedFleet(Fleet):
    """The harness's fleet with every fleet.py command run as `account`, with
    its own HOME and TMPDIR (in `root`); USER and LOGNAME stay the caller's, as
    setpriv and `su` leave them, so the fleet must name whom it runs as."""

    def __init__(self, root: Path, account: Account):
        super().__init__(root, weights=[1, 1], active=2)
        self.account = account
        home = root / "home"
        (home / "tmp").mkdir(parents=True)
        caller = pwd.getpwuid(os.getuid()).pw_name
        self.env.update(HOME=str(home), TMPDIR=str(home / "tmp"), USER=caller, LOGNAME=caller)
        for path in (root, home, home / "tmp", self.config):
            os.chown(path, account.uid, account.gid)

    def cli(self, *args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
        command = [*self.account.prefix, sys.executable, str(REPO / "scripts" / "fleet.py"),
                   "--config", str(self.config), "--run-dir", str(self.run_dir), *args]
        result = subprocess.run(command, check=False, cwd=REPO, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        assert not check or result.returncode == 0, f"fleet.py {' '.join(args)}: {result.stdout}{result.stderr}"
        return result


@pytest.fixture(scope="module")
def fleet():
    account = unprivileged_account()
    root = Path(tempfile.mkdtemp(prefix="fleet-unprivileged-"))
    try:
        fleet = UnprivilegedFleet(root, account)
        needed = [REPO, Path(sys.prefix), Path(sys.executable), Path(sys.base_prefix) / "lib", root]
        with searchable(needed, account), fleet.running(2):
            yield fleet
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fleet_tree(fleet: UnprivilegedFleet) -> dict[int, psutil.Process]:
    """supervisord, everything under it, and whatever carries an instance's ASR_PORT anywhere."""
    found = {proc.pid: proc for proc in fleet_processes(fleet.run_dir)}
    for port in fleet.ports:
        found.update((proc.pid, proc) for proc in instance_processes(port))
    return found


def role(proc: psutil.Process, supervisord_pid: int) -> str:
    command = " ".join(proc.cmdline())
    if proc.pid == supervisord_pid:
        return "supervisord"
    if command.startswith(("nginx: master", "nginx: worker")):
        return command.split(" process")[0]
    if "fleet.py" in command and command.endswith(" poll"):
        return "health poller"
    if port := proc.environ().get("ASR_PORT"):
        return f"instance {port} " + ("gunicorn master" if proc.ppid() == supervisord_pid else "child")
    return f"other: {command[:80]}"


def python_files(pid: int) -> set[str]:
    """Files of a Python installation the process maps (interpreter, libpython, extensions)."""
    maps = (line.split(None, 5) for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    return {fields[5] for fields in maps if len(fields) == 6 and re.search(r"python3\.\d+", fields[5])}


def credentials(pid: int) -> dict:
    """Uid and Gid (real, effective, saved, filesystem), groups and capabilities, from the kernel."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"uid": fields["Uid"].split(), "gid": fields["Gid"].split(), "groups": sorted(fields["Groups"].split()),
            **{cap: int(fields[cap], 16) for cap in ("CapPrm", "CapEff", "CapAmb")}}


def test_every_fleet_process_runs_as_the_user_and_holds_no_privilege(fleet):
    account = fleet.account
    assert account.uid != 0 and fleet.resolved["user"] == account.name and not fleet.resolved["is_root"]
    expected = {"uid": [str(account.uid)] * 4, "gid": [str(account.gid)] * 4,
                "groups": sorted(str(g) for g in account.groups), "CapPrm": 0, "CapEff": 0, "CapAmb": 0}
    ours = {f for f in python_files(os.getpid()) if "/libpython" in f or f == os.path.realpath(sys.executable)}
    homes = (str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve()))
    supervisord_pid = int((fleet.run_dir / "supervisord.pid").read_text())
    roles: dict[str, list[int]] = {}
    for proc in fleet_tree(fleet).values():
        what = f"{role(proc, supervisord_pid)} (pid {proc.pid})"
        assert credentials(proc.pid) == expected, f"{what}: {credentials(proc.pid)}"
        mapped = python_files(proc.pid)
        assert not mapped or (ours <= mapped and all(f.startswith(homes) for f in mapped)), f"{what}: {mapped}"
        roles.setdefault(role(proc, supervisord_pid), []).append(proc.pid)
    wanted = {"supervisord", "nginx: master", "nginx: worker", "health poller",
              *(f"instance {port} {part}" for port in fleet.ports for part in ("gunicorn master", "child"))}
    assert wanted <= set(roles), roles
    assert len(roles["nginx: master"]) == 1 and len(roles["health poller"]) == 1, roles


def test_nginx_needs_no_root_and_answers_a_transcription(fleet):
    run = f"{fleet.run_dir}/"
    conf = (fleet.run_dir / "nginx.conf").read_text()
    assert not re.search(r"(?m)^\s*user\s", conf)  # an unprivileged master cannot switch users
    written = dict(re.findall(r"(?m)^\s*(pid|error_log|access_log|\w+_temp_path)\s+([^\s;]+)", conf))
    assert {"pid", "error_log", "access_log", "client_body_temp_path", "proxy_temp_path"} <= set(written)
    assert all(path.startswith(run) for path in written.values()), written  # nothing in /var/log, /run
    master = next(p for p in fleet_tree(fleet).values() if " ".join(p.cmdline()).startswith("nginx: master"))
    assert f"-p {run} " in " ".join(master.cmdline()) and f"-e {run}logs/" in " ".join(master.cmdline())
    request_id = f"unprivileged-{uuid.uuid4().hex[:8]}"
    with CLIP.open("rb") as handle:
        response = requests.post(fleet.url + "/asr", files={"file": (CLIP.name, handle)}, timeout=120,
                                 headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert normalize_english(response.json()["text"]) == CLIP_TEXT
    assert response.headers["X-ASR-Worker"] in fleet.names
    access_log = fleet.run_dir / "logs" / "nginx-access.log"
    wait_for(lambda: f"rid={request_id}" in access_log.read_text(), 10, "the request in Nginx's access log")

    own = f"{fleet.root}/"
    outside = {(proc.pid, f.path) for proc in fleet_tree(fleet).values() for f in proc.open_files()
               if not f.path.startswith(own)}
    assert not outside, outside  # no file open outside the run folder and the user's HOME and TMPDIR
    run_files = [fleet.run_dir, *fleet.run_dir.rglob("*")]
    assert not [str(p) for p in run_files if p.lstat().st_uid != fleet.account.uid]
    assert stat.S_IMODE(fleet.run_dir.stat().st_mode) == 0o700
    logs = {p.name: REFUSALS.findall(p.read_text(errors="replace")) for p in (fleet.run_dir / "logs").glob("*.log")}
    assert not any(logs.values()), logs


def test_status_and_stop_work_as_the_user_and_leave_nothing(fleet):
    def status_when_running() -> subprocess.CompletedProcess | None:  # STARTING until startsecs pass
        status = fleet.cli("status", check=False, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        programs = [*fleet.names, "nginx", "health-poller"]
        return status if all(re.search(rf"(?m)^{p}\s+RUNNING\s", status.stdout) for p in programs) else None
    status = wait_for(status_when_running, 30, "fleet.py status to say every program RUNNING", interval=1)
    for name, port in zip(fleet.names, fleet.ports):
        assert re.search(rf"(?m)^{name}\s+{port}\s+cpu\s+1\s+active\s+ok\s", status.stdout), status.stdout

    tree = fleet_tree(fleet)
    stop = fleet.cli("stop", check=False, timeout=180)
    assert stop.returncode == 0 and "fleet: stopped" in stop.stdout, stop.stdout + stop.stderr

    def alive(proc: psutil.Process) -> bool:
        # A zombie has exited (a bare container's PID 1 may never reap daemonized supervisord).
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    wait_for(lambda: not [p for p in tree.values() if alive(p)], 30, "every fleet process to exit")
    again = fleet.cli("status", check=False, timeout=60)
    assert again.returncode == 3 and "not running" in again.stdout, again.stdout + again.stderr
