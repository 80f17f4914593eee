"""A real Samba server (Debian's ``smbd``) on a loopback port: the simulated Hyper-V host's share.

``SambaServer(state_dir, share, directory, user, password)`` is a context manager. It writes
its own ``smb.conf`` with every Samba directory (private, lock, state, cache, pid, ncalrpc)
under ``state_dir``, so it touches nothing of the machine's Samba; listens on 127.0.0.1 only,
on a free port (:attr:`port`); shares ``directory`` read-write as ``share``; and knows one
account, ``user`` with ``password``, kept in its own tdbsam database. The password is given to
``smbpasswd -s`` on stdin, never on a command line, and nothing keeps it on disk in clear.

Samba accounts must map to a Unix account. Rather than adding one to the machine, ``user`` is
mapped (``username map``) to the Unix user running the tests, and files on the share belong to
that user. SMB3 encryption is offered (``server smb encrypt = desired``); a client may require
it.

What it needs: ``smbd`` runs as the user that starts it and changes to the mapped user's uid
for each session, which needs root (``CAP_SETUID``/``CAP_SETGID``, and ``CAP_DAC_OVERRIDE`` to
keep its state files private). The port is above 1024, so ``CAP_NET_BIND_SERVICE`` is not
needed. As another user :func:`smbd_usable` says why it cannot run (tests skip then).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SMBD = "smbd"
SMBPASSWD = "smbpasswd"
START_TIMEOUT = 30.0


class SambaError(RuntimeError):
    """smbd could not be configured or started; the message says why (with its log's tail)."""


def smbd_available() -> bool:
    return shutil.which(SMBD) is not None and shutil.which(SMBPASSWD) is not None


def smbd_usable() -> str | None:
    """Why smbd cannot run here, or None."""
    if not smbd_available():
        return "smbd is not installed (Debian's samba package)"
    if os.geteuid() != 0:
        return "smbd needs root to switch to a session's user"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SambaServer:
    """``smbd`` serving ``directory`` as ``\\\\127.0.0.1\\<share>`` on :attr:`port`, with one account."""

    def __init__(
        self, state_dir: Path, share: str, directory: Path, user: str, password: str, *, port: int | None = None
    ) -> None:
        if problem := smbd_usable():
            raise SambaError(problem)
        self.state_dir = state_dir
        self.share = share
        self.directory = directory
        self.user = user
        self._password = password
        self.port = port or free_port()
        self.unix_user = pwd.getpwuid(os.geteuid()).pw_name
        self.conf = state_dir / "smb.conf"
        self.log_file = state_dir / "smbd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> None:
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.state_dir / "users.map").write_text(f"{self.unix_user} = {self.user}\n")
        d = self.state_dir
        self.conf.write_text(
            "[global]\n"
            "  server role = standalone server\n"
            "  workgroup = HYPERV\n"
            "  netbios name = VMKEEPSIM\n"
            f"  smb ports = {self.port}\n"
            "  interfaces = 127.0.0.1\n"
            "  bind interfaces only = yes\n"
            f"  private dir = {d / 'private'}\n"
            f"  lock directory = {d / 'lock'}\n"
            f"  state directory = {d / 'state'}\n"
            f"  cache directory = {d / 'cache'}\n"
            f"  pid directory = {d / 'pid'}\n"
            f"  ncalrpc dir = {d / 'ncalrpc'}\n"
            f"  passdb backend = tdbsam:{d / 'private' / 'passdb.tdb'}\n"
            f"  username map = {d / 'users.map'}\n"
            f"  log file = {self.log_file}\n"
            "  log level = 1\n"
            "  max log size = 0\n"
            "  map to guest = Never\n"
            "  server min protocol = SMB2_10\n"
            "  server smb encrypt = desired\n"
            "  load printers = no\n"
            "  printing = bsd\n"
            "  printcap name = /dev/null\n"
            "  disable spoolss = yes\n"
            "  disable netbios = yes\n"
            "  dns proxy = no\n"
            "  kernel oplocks = no\n"
            "  kernel share modes = no\n"
            "  posix locking = no\n"
            f"[{self.share}]\n"
            f"  path = {self.directory}\n"
            "  read only = no\n"
            f"  valid users = {self.unix_user}\n"
            "  create mask = 0644\n"
        )

    def _set_password(self) -> None:
        secret = f"{self._password}\n{self._password}\n".encode()
        proc = subprocess.run(
            [SMBPASSWD, "-c", str(self.conf), "-a", "-s", self.unix_user],
            input=secret,
            capture_output=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0:
            raise SambaError(f"smbpasswd failed: {proc.stderr.decode(errors='replace').strip()}")

    def start(self) -> SambaServer:
        self._write_conf()
        self._set_password()
        self._process = subprocess.Popen(
            [SMBD, "--foreground", "--no-process-group", "-s", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: smbd signals the whole group when it stops
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SambaError(f"smbd exited with {self._process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.05)
        self.stop()
        raise SambaError(
            f"smbd did not listen on 127.0.0.1:{self.port} within {START_TIMEOUT:.0f} s: {self.log_tail()}"
        )

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def drop_connections(self) -> int:
        """Test API: kill the smbd processes serving clients (not the listener), as a network cut would.

        Returns how many were killed. Clients see their connection closed; new ones are served.
        """
        if self._process is None:
            return 0
        killed = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError, ValueError):
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
                if fields.get("Name", "").strip() == "smbd" and int(fields.get("PPid", "0")) == self._process.pid:
                    os.kill(int(status.parent.name), signal.SIGKILL)
                    killed += 1
        return killed

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> SambaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
