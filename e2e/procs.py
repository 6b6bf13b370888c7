"""The e2e test's child processes: each in its own session, killed with this process
(PR_SET_PDEATHSIG) and at exit, its output in WORKDIR/NAME.log; and free local ports (stdlib only)."""
import ctypes
import os
import signal
import socket
import subprocess
import time

from common import LOCALHOST

_libc = None


def pdeathsig():
    """preexec_fn: SIGKILL the child if the driver dies (Linux prctl)."""
    try:
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Procs:
    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = {}  # name -> Popen
        self.pidfile = os.path.join(workdir, "pids")

    def _write_pidfile(self):
        with open(self.pidfile, "w") as f:
            for p in self.procs.values():
                if p.poll() is None:
                    f.write(f"{p.pid}\n")

    def start(self, name, argv, env=None):
        # A restart under the same name (Envoy after its SIGKILL) appends to that child's log; a
        # first start truncates one an earlier run left in a reused workdir.
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab" if name in self.procs else "wb")
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=pdeathsig, env=env, close_fds=True,
        )
        log.close()
        self.procs[name] = p
        self._write_pidfile()
        return p

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def kill(self, name, sig=signal.SIGKILL, wait=10.0):
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            _signal(p, sig)
            _reap(p, wait)
        self._write_pidfile()

    def stop_all(self, wait=3.0):
        """SIGTERM every child at once, SIGKILL those still running `wait` seconds later."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + wait
        for p in alive:
            _reap(p, max(0.1, deadline - time.monotonic()))
        self._write_pidfile()

    def log_tail(self, name, n=30):
        path = os.path.join(self.workdir, f"{name}.log")
        try:
            with open(path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


def _signal(p, sig):
    """Signal child p's whole session (its own: pgid == pid); gone already is fine."""
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def _reap(p, wait):
    """Wait up to `wait` seconds for child p to exit, then SIGKILL it and wait for that."""
    try:
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        _signal(p, signal.SIGKILL)
        p.wait(timeout=5)


def free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports
