"""Starts suite processes by forking them from a server that has already imported torch,
hypothesis and pytest, so a shard, and a restart after a crash, skips about a second of imports
(1.3 s of a 2-core machine's start-up per process, measured on the quick profile).

Used for CPU runs on Linux only; elsewhere, or when the server cannot be started or has died,
:mod:`harness.runner` starts ``python -m harness.suite_process`` as before (``ATTN_HARNESS_FORKSERVER=0``
forces that). A forked process behaves as a started one: its own pid, working directory, pipe,
exit status and signals; the environment is the one the server was started with
(:func:`harness.runner.suite_environment`).

The server imports no implementation: a user's module may initialise CUDA or Triton when imported,
which a forked child could not use, and each process must load the kernel afresh. It forks from
its only Python thread; importing torch starts one native thread, as in every DataLoader worker
forked after ``import torch``.

Protocol, over a SOCK_SEQPACKET socket pair (one message per packet, so no framing): the runner
sends ``{"argv", "cwd"}`` with the write end of a pipe attached (SCM_RIGHTS); the server forks,
the child makes the pipe its stdout and stderr and runs pytest; the server answers ``{"pid"}``
and, when the child ends, ``{"exit": pid, "code"}`` with the code as ``Popen.returncode`` gives it
(negative: killed by that signal).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Optional

# What every suite process imports before its first property runs; an implementation is never one.
PRELOAD = ("torch", "numpy", "hypothesis", "hypothesis.strategies", "pytest", "_pytest.python",
           "attention_harness_plugin", "harness.suite_plugin")
_PACKET = 1 << 20  # a request is an argv: a restart deselects every finished property by node id
SPAWN_TIMEOUT_S = 120.0
LOST = 255  # the exit code reported for a child whose server died before it did


def usable(device: str) -> bool:
    """Whether suite processes for ``device`` are forked from a server here."""
    return (device == "cpu" and sys.platform.startswith("linux") and hasattr(socket, "send_fds")
            and os.environ.get("ATTN_HARNESS_FORKSERVER", "1") != "0")


class Child:
    """A forked suite process, with the part of :class:`subprocess.Popen` the runner uses."""

    def __init__(self, stdout_fd: int):
        self.stdout = os.fdopen(stdout_fd, "r", buffering=1, errors="replace")
        self.pid: Optional[int] = None
        self.returncode: Optional[int] = None
        self._ended = threading.Event()

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"suite process {self.pid}", timeout)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.pid is not None and not self._ended.is_set():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _end(self, code: int) -> None:
        self.returncode = code
        self._ended.set()


class ForkServer:
    """One server per ``attn-harness check``: start it first, before the command imports torch
    itself, so the two imports run on two cores."""

    def __init__(self, env: dict):
        import tempfile

        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # An empty working directory, as for a started suite process: `python -m` puts it first
        # on sys.path, and in a clone's root that would be the checkout's harness/.
        self._workdir = tempfile.mkdtemp(prefix="attn-harness-server-")
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "harness.launcher", str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), env=env, cwd=self._workdir,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._lock = threading.Lock()  # one request in flight: its answer is the next "pid" packet
        self._pending: Optional[Child] = None
        self._reply = threading.Condition()
        self._children: dict = {}
        self._dead = False
        threading.Thread(target=self._read, name="attn-harness-forkserver", daemon=True).start()

    def spawn(self, argv: list, cwd: str, entry: str = "pytest") -> Optional[Child]:
        """A child running ``pytest argv`` in ``cwd`` (``entry="preload"``: ``python -m harness.preload
        argv``, which loads implementations); None if the server is gone (start one the ordinary
        way then)."""
        r, w = os.pipe()
        child = Child(r)
        try:
            with self._lock:
                with self._reply:
                    if self._dead:
                        raise OSError("the fork server has ended")
                    self._pending = child
                socket.send_fds(self._sock, [json.dumps({"argv": argv, "cwd": cwd, "entry": entry}).encode()], [w])
                with self._reply:
                    # The first answer waits for the server's imports (seconds; more on a cold disk).
                    if not self._reply.wait_for(lambda: self._pending is None or self._dead, timeout=SPAWN_TIMEOUT_S):
                        self._dead = True  # a server this slow is not worth waiting for again
                    self._pending = None
                if child.pid is None:
                    raise OSError("the fork server did not start the process")
        except OSError:
            child.stdout.close()
            return None
        finally:
            os.close(w)  # the child holds the write end now: EOF when it exits
        return child

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(_PACKET)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            with self._reply:
                if "pid" in msg:
                    # Registered here, not in spawn(): the child's exit may be the very next packet.
                    child, self._pending = self._pending, None
                    if child is not None and msg["pid"] is not None:
                        child.pid = msg["pid"]
                        self._children[child.pid] = child
                    self._reply.notify_all()
                elif "exit" in msg:
                    child = self._children.pop(msg["exit"], None)
                    if child is not None:
                        child._end(msg["code"])
        with self._reply:
            self._dead = True
            self._reply.notify_all()
            # Children whose end the server did not see: their output still streams to EOF, their
            # status is lost.
            for child in self._children.values():
                child._end(LOST)
            self._children.clear()

    def close(self) -> None:
        import shutil

        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # the server reads EOF and exits
            self._sock.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)


def start(env: dict, device: str) -> Optional[ForkServer]:
    """A fork server for suite processes, or None where none is used (see :func:`usable`)."""
    if not usable(device):
        return None
    try:
        return ForkServer(env)
    except OSError:
        return None


# ---- the server side: ``python -m harness.launcher FD`` --------------------------------------

def _serve(fd: int) -> None:
    import importlib

    sock = socket.socket(fileno=fd)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the child imports it again and reports the error itself
            pass
    children: set = set()
    while True:
        try:
            ready, _, _ = select.select([sock], [], [], 0.05 if children else None)
        except KeyboardInterrupt:
            break
        if ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, _PACKET, 1)
            except (OSError, KeyboardInterrupt):
                break
            if not data:
                break  # the runner is done (or gone)
            req = json.loads(data)
            try:
                pid = os.fork()
            except OSError:
                pid = None
            if pid == 0:
                sock.close()
                _child(req, fds[0])
            for f in fds:
                os.close(f)
            if pid is not None:
                children.add(pid)
            _send(sock, {"pid": pid})
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
    os._exit(0)


def _send(sock, msg: dict) -> None:
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        pass


def _child(req: dict, out: int) -> None:
    # The fresh start a child of ``subprocess.Popen`` would get: default SIGINT handling (so Ctrl-C
    # ends pytest), its stdout and stderr on the pipe, its own working directory and argv.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.chdir(req["cwd"])
    sys.argv = ["pytest", *req["argv"]]
    try:
        if req.get("entry") == "preload":
            from harness.preload import main
        else:
            from harness.suite_process import main

        main()  # leaves with os._exit
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(1)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
