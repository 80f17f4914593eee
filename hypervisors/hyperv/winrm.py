"""The agent's WinRM client: PowerShell scripts on a Hyper-V host, over one authenticated session.

Built on pywinrm's ``Protocol`` (``winrm.Session.run_ps`` closes the HTTP session after every
command, so NTLM would be negotiated again each time):

- **Transport security.** ``http://`` means NTLM with message encryption always on (pywinrm
  refuses to start otherwise); Basic authentication is never used. ``https://`` is verified by
  a :class:`~vmkeep.hypervisors.tls.ServerTrust` (system CAs, a CA file, a pinned thumbprint,
  or ``--insecure``), mounted on pywinrm's requests session as a
  :class:`~vmkeep.hypervisors.https.TrustedAdapter`; a pin is checked before any request, so a
  wrong certificate never sees the credentials. No proxies, no ``REQUESTS_CA_BUNDLE``.
- **Scripts.** A script goes as ``powershell -EncodedCommand <base64 of UTF-16LE>``. If that
  command line would exceed cmd.exe's 8191 characters, or the caller has input for the script,
  the command is :data:`STDIN_BOOTSTRAP` and the script and its input travel on stdin (in parts
  of :data:`STDIN_CHUNK` bytes, each well under the host's envelope size); the script sees the
  input as ``$VmkeepInput`` (a byte array).
- **Errors.** A wrong password is :class:`AuthenticationFailed`; an unreachable host or a
  connection lost again and again is :class:`ConnectionFailed` (transient faults are retried a
  bounded number of times, on a new session); a script ending with a non-zero exit code is
  :class:`CommandFailed` with PowerShell's error text cleaned from CLIXML.
- **Secrets.** The password is never logged nor put in a message. A script's text is never
  logged either (its parameter literal may name VMs and paths), and long base64 runs are cut
  out of the error text PowerShell echoes back.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMTransportError, WSManFaultError
from winrm.protocol import Protocol
from winrm.transport import Transport

from ..exceptions import SourceError, UntrustedCertificate
from ..https import TrustedAdapter
from ..retry import retry_transient
from ..tls import ServerTrust, TlsPolicy, require_tls
from .exceptions import AuthenticationFailed, CommandFailed, ConnectionFailed, HypervError

log = logging.getLogger(__name__)

MAX_COMMAND_LINE = 8191  # cmd.exe's limit; WinRS runs commands through it
STDIN_CHUNK = 64 * 1024  # bytes of stdin per Send: ~88 KB envelopes, under every host's MaxEnvelopeSize
DEFAULT_PORTS = {"http": 5985, "https": 5986}

#: The loader sent as the command when the script goes on stdin. Stdin holds ASCII lines: the
#: script (base64 of UTF-8), then its input (base64). The simulated host pins this text.
STDIN_BOOTSTRAP = (
    "# vmkeep stdin bootstrap v1\n"
    "$ErrorActionPreference = 'Stop'\n"
    "$vmkeepLines = @($input | ForEach-Object { [string]$_ })\n"
    "$vmkeepScript = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($vmkeepLines[0]))\n"
    "$VmkeepInput = [Convert]::FromBase64String(($vmkeepLines | Select-Object -Skip 1) -join '')\n"
    "Remove-Variable vmkeepLines\n"
    ". ([ScriptBlock]::Create($vmkeepScript))\n"
)

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


@dataclass(frozen=True)
class WinrmSettings:
    """Where the host's WinRM service is and how to log in. ``endpoint``: ``http(s)://host[:port][/wsman]``."""

    endpoint: str
    user: str  # DOMAIN\\user or user
    password: str = field(repr=False)
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    operation_timeout: int = 20  # seconds a Receive may wait on the host before it is polled again
    read_timeout: int = 30  # seconds of HTTP silence before the connection counts as lost
    attempts: int = 3  # tries of one command when the connection fails (bounded)
    retry_wait: float = 0.5  # first wait between tries (doubles, at most 8 s)


def clean_stderr(stderr: bytes) -> str:
    """PowerShell's stderr as text: CLIXML error records joined, ``_xHHHH_`` escapes decoded."""
    text = stderr.decode("utf-8", "replace")
    if text.startswith("#< CLIXML"):
        try:
            root = ET.fromstring(text.split("\n", 1)[1] if "\n" in text else "")
        except ET.ParseError:
            return text.strip()
        lines = [
            re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m[1], 16)), node.text or "")
            for node in root.iter()
            if node.tag.rpartition("}")[2] == "S" and node.get("S") == "Error"
        ]
        text = "".join(lines)
    return _BASE64_RUN.sub("<...>", text.replace("\r\n", "\n")).strip()


def encode_command(script: str) -> str:
    """The command line that runs ``script``: powershell with the script as -EncodedCommand."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return f"powershell -NoProfile -NonInteractive -EncodedCommand {encoded}"


def plan_command(script: str, stdin: bytes | None) -> tuple[str, bytes | None]:
    """(command line, stdin to send): the script inline if it fits and has no input, else via stdin."""
    line = encode_command(script)
    if stdin is None and len(line) <= MAX_COMMAND_LINE:
        return line, None
    payload = base64.b64encode(script.encode("utf-8")) + b"\r\n" + base64.b64encode(stdin or b"") + b"\r\n"
    return encode_command(STDIN_BOOTSTRAP), payload


class _Transient(Exception):
    """A connection fault worth another try on a new session."""


class _TrustedTransport(Transport):
    """pywinrm's transport with vmkeep's HTTPS trust, and no proxies or CA bundles from the environment."""

    def __init__(self, trust: ServerTrust | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trust = trust

    def build_session(self) -> requests.Session:
        session = super().build_session()
        self._secure(session)
        return session

    def setup_encryption(self, session: requests.Session) -> None:
        self._secure(session)  # before the first request, which build_session sends from here
        super().setup_encryption(session)

    def _secure(self, session: requests.Session) -> None:
        session.trust_env = False
        session.proxies = {}
        if self.trust is not None and not isinstance(session.get_adapter("https://"), TrustedAdapter):
            session.mount("https://", TrustedAdapter(self.trust, pool_connections=1, pool_maxsize=1))


class WinrmClient:
    """Runs PowerShell scripts on one host over one authenticated WinRM session. Not thread-safe."""

    def __init__(self, settings: WinrmSettings) -> None:
        self.settings = settings
        url = settings.endpoint if "://" in settings.endpoint else f"http://{settings.endpoint}"
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if not parts.hostname:
            raise SourceError(f"{settings.endpoint}: not a WinRM endpoint (use https://host:5986/wsman)")
        # Over http the messages are sealed with NTLM's session keys: that is the protection.
        self.tls = require_tls(settings.tls, scheme, url, "Hyper-V host", message_encryption=scheme == "http")
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[scheme]
        self.url = f"{scheme}://{self.host}:{self.port}{parts.path or '/wsman'}"
        self._trust: ServerTrust | None = None
        self._protocol: Protocol | None = None

    # -------------------------------------------------------------- session

    def _connect(self) -> Protocol:
        if self._protocol is not None:
            return self._protocol
        if self.tls and self._trust is None:
            self._trust = ServerTrust.establish(self.settings.tls, self.host, self.port)  # a pin is checked here
        s = self.settings
        protocol = Protocol(
            self.url,
            transport="ntlm",
            username=s.user,
            password=s.password,
            read_timeout_sec=s.read_timeout,
            operation_timeout_sec=s.operation_timeout,
            message_encryption="auto" if self.tls else "always",
            proxy=None,
        )
        protocol.transport = _TrustedTransport(
            self._trust,
            endpoint=self.url,
            username=s.user,
            password=s.password,
            read_timeout_sec=s.read_timeout,
            server_cert_validation="validate" if self._trust is None or self._trust.verifies else "ignore",
            ca_trust_path=None,  # None: no CA path from the environment
            auth_method="ntlm",
            message_encryption="auto" if self.tls else "always",
            proxy=None,
        )
        self._protocol = protocol
        return protocol

    def _drop_session(self) -> None:
        if self._protocol is not None:
            with contextlib.suppress(Exception):
                self._protocol.transport.close_session()
            self._protocol = None

    def close(self) -> None:
        self._drop_session()

    def __enter__(self) -> WinrmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- commands

    def run(self, script: str, stdin: bytes | None = None, *, idempotent: bool = False) -> bytes:
        """Run ``script`` (PowerShell) on the host and return its stdout.

        ``stdin``: bytes the script reads as ``$VmkeepInput``. ``idempotent``: the script may run
        again if the connection is lost after it started (a read); otherwise only faults before
        the command reached the host are retried.
        """
        command_line, payload = plan_command(script, stdin)
        started = [False]

        def attempt() -> tuple[bytes, bytes, int]:
            started[0] = False
            try:
                return self._run_once(command_line, payload, started)
            except _Transient as exc:
                self._drop_session()
                if started[0] and not idempotent:
                    raise ConnectionFailed(
                        f"lost the connection to {self.host} while a command ran ({exc}); not running it again "
                        "(it may have completed on the host)"
                    ) from None
                raise

        try:
            stdout, stderr, exit_code = retry_transient(
                attempt,
                transient=_Transient,
                what=f"WinRM {self.url}",
                log=log,
                attempts=self.settings.attempts,
                wait=self.settings.retry_wait,
            )
        except _Transient as exc:
            raise ConnectionFailed(
                f"lost the connection to {self.url} ({exc}); gave up after {self.settings.attempts} attempts"
            ) from None
        if exit_code != 0:
            message = clean_stderr(stderr) or "(no error text)"
            first = message.splitlines()[0] if message else ""
            raise CommandFailed(
                f"a PowerShell command on {self.host} failed (exit code {exit_code}): {first}", message, exit_code
            )
        if stderr:
            log.warning("PowerShell on %s reported: %s", self.host, clean_stderr(stderr))
        return stdout

    def _run_once(self, command_line: str, payload: bytes | None, started: list[bool]) -> tuple[bytes, bytes, int]:
        with self._faults():
            protocol = self._connect()
            shell_id = protocol.open_shell(noprofile=True, codepage=65001)
            try:
                command_id = protocol.run_command(shell_id, command_line)
                started[0] = True
                if payload is not None:
                    for offset in range(0, len(payload), STDIN_CHUNK):
                        end = offset + STDIN_CHUNK >= len(payload)
                        protocol.send_command_input(shell_id, command_id, payload[offset : offset + STDIN_CHUNK], end)
                result = protocol.get_command_output(shell_id, command_id)
                protocol.cleanup_command(shell_id, command_id)
            except BaseException:
                with contextlib.suppress(Exception):
                    protocol.close_shell(shell_id, close_session=False)
                raise
            protocol.close_shell(shell_id, close_session=False)
            return result

    @contextlib.contextmanager
    def _faults(self) -> Any:
        """pywinrm's and requests' exceptions as vmkeep's."""
        try:
            yield
        except (HypervError, SourceError):
            raise
        except InvalidCredentialsError:
            raise AuthenticationFailed(
                f"{self.host} refused the user {self.settings.user!r} (wrong user name or password?)"
            ) from None
        except WSManFaultError as exc:
            raise HypervError(f"WinRM on {self.host} refused the request: {exc.reason}") from None
        except WinRMTransportError as exc:
            if exc.code in (502, 503, 504):
                raise _Transient(f"HTTP {exc.code}") from None
            raise HypervError(f"WinRM on {self.host} answered HTTP {exc.code}") from None
        except WinRMError as exc:
            raise HypervError(f"WinRM on {self.host}: {exc}") from None
        except requests.RequestException as exc:
            untrusted = _untrusted(exc)
            if untrusted is not None:
                raise untrusted from None
            raise _Transient(_describe(exc)) from None
        except (OSError, AssertionError) as exc:  # pywinrm asserts RelatesTo; a mangled answer is a fault too
            raise _Transient(type(exc).__name__) from None


def _untrusted(exc: BaseException) -> UntrustedCertificate | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UntrustedCertificate):
            return current
        seen.add(id(current))
        for arg in current.args:
            if isinstance(arg, BaseException):
                found = _untrusted(arg)
                if found is not None:
                    return found
        current = current.__cause__ or current.__context__
    return None


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection closed in the middle of an answer"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed or closed"
    return type(exc).__name__
