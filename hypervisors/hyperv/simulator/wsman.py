"""A WS-Management (WinRM) server on 127.0.0.1 that the unmodified pywinrm client talks to.

It is the protocol layer of the simulated Hyper-V host (NTLM and message encryption are in
ntlm.py, the SOAP envelopes, faults and CLIXML in soap.py). It speaks what a Windows host's WinRM
service speaks to ``winrm.Protocol`` and ``winrm.Session.run_ps``, and checks what a Windows host
checks, but it runs no PowerShell:

- **Authentication.** NTLM through ``spnego.server(protocol="ntlm")``, with users from an
  ``NTLM_USER_FILE`` that the caller writes (:func:`write_ntlm_user_file`). NTLM authenticates a
  TCP connection, not a request, so the state lives on the connection's handler. A wrong
  password gets HTTP 401. Over HTTPS the client's channel binding (RFC 5929
  ``tls-server-end-point``) is checked against the server's own certificate.
- **Message encryption** over plain HTTP: MS-WSMV 2.2.9.1.1 ``multipart/encrypted`` framing
  sealed with the NTLM session keys, in both directions. Unencrypted SOAP over plain HTTP is
  refused, as with ``AllowUnencrypted = false``.
- **The shell lifecycle**: ``transfer/Create`` -> ShellId, ``shell/Command`` -> CommandId,
  ``shell/Send`` (stdin, in parts), ``shell/Receive`` (base64 streams, ``CommandState/Done`` and
  ``ExitCode``; output larger than the client's ``MaxEnvelopeSize`` comes in several Receives),
  ``shell/Signal``, ``transfer/Delete``. Every answer's ``RelatesTo`` echoes the request's
  ``MessageID``. Errors are WS-Man SOAP faults (HTTP 500).
- **Limits**: a request larger than the service's ``MaxEnvelopeSizekb`` (500 KB by default) is
  refused with an ``EncodingLimit`` fault; a command line over 8191 characters fails the way
  cmd.exe fails it ("The command line is too long.", exit code 1); a Receive that waits longer
  than the request's ``OperationTimeout`` answers the timeout fault 2150858793.

A command is decoded, not run: ``powershell [-flags] -EncodedCommand <base64 of UTF-16LE>``
gives the script text, and the stdin the client sent is the input. When the script is
:data:`STDIN_BOOTSTRAP` (the agent's small loader for scripts too long for a command line,
pinned here as literal text so a change on the agent's side fails the tests), the real script
and input are unpacked from stdin first. The :data:`Handler` then answers with a
:class:`CommandResult`; its stderr goes back as CLIXML, as PowerShell writes it.

Test API (besides ``endpoint``, ``start``/``stop`` and the context manager):

- ``server.faults`` (:class:`Faults`): ``disconnect(action, times)`` closes the TCP connection in
  the middle of the next answers; ``receive_timeouts`` answers Receives with the timeout fault.
- ``server.log`` (:class:`ServerLog`): what the server saw: every HTTP request (action, whether
  it carried credentials, whether it was encrypted), failed logins, and every command decoded.
- ``server.open_shells()``: the ShellIds still open (a client that leaks shells shows here).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import socket
import ssl
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import spnego
from spnego.channel_bindings import GssChannelBindings

from .ntlm import ENCRYPTED_PROTOCOL, acceptor_users, channel_bindings, ntlm_user, seal, unseal
from .soap import (
    NS,
    Action,
    Fault,
    action_of,
    clixml,
    envelope,
    fault_envelope,
    max_envelope,
    message_id,
    operation_timeout,
    shell_id_of,
    timed_out,
)

log = logging.getLogger(__name__)

MAX_COMMAND_LINE = 8191  # cmd.exe's limit, which WinRS commands go through
COMMAND_LINE_TOO_LONG = b"The command line is too long.\r\n"
DEFAULT_MAX_ENVELOPE = 500 * 1024  # the service's MaxEnvelopeSizekb, Windows Server 2012 and later
SHELL_NOT_FOUND_CODE = 2150858843


#: The agent's loader for a script sent on stdin (hypervisors/hyperv/winrm.py sends it as the
#: -EncodedCommand). Stdin holds ASCII lines: the script as base64 of UTF-8, then the input as
#: base64. Pinned literally: if the agent's copy changes, the simulator no longer recognises it.
STDIN_BOOTSTRAP = (
    "# vmkeep stdin bootstrap v1\n"
    "$ErrorActionPreference = 'Stop'\n"
    "$vmkeepLines = @($input | ForEach-Object { [string]$_ })\n"
    "$vmkeepScript = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($vmkeepLines[0]))\n"
    "$VmkeepInput = [Convert]::FromBase64String(($vmkeepLines | Select-Object -Skip 1) -join '')\n"
    "Remove-Variable vmkeepLines\n"
    ". ([ScriptBlock]::Create($vmkeepScript))\n"
)

_POWERSHELL = ("powershell", "powershell.exe")
_ENCODED_COMMAND_FLAGS = ("-e", "-ec", "-enc", "-encodedcommand")


def encoded_command(command_line: str) -> str | None:
    """The base64 argument of ``powershell ... -EncodedCommand <b64>``, or None for any other command."""
    words = command_line.split()
    if not words or words[0].lower() not in _POWERSHELL:
        return None
    for flag, value in itertools.pairwise(words):
        if flag.lower() in _ENCODED_COMMAND_FLAGS:
            return value
    return None


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and returned. ``stderr`` is plain text; the server wraps it in CLIXML."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0


#: ``handler(script, stdin) -> CommandResult``: called once per command, in its own thread.
Handler = Callable[[str, bytes], CommandResult]


@dataclass(frozen=True)
class TlsIdentity:
    """The server's certificate and key (PEM files) for HTTPS."""

    cert_pem: Path
    key_pem: Path


# ------------------------------------------------------------------------------ test API


@dataclass
class Faults:
    """Failures to inject. Thread-safe; each counts down as it fires."""

    receive_timeouts: int = 0  # the next N Receives answer the operation-timeout fault at once
    _disconnects: list[tuple[Action | None, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def disconnect(self, action: Action | None = None, times: int = 1) -> None:
        """Close the TCP connection half-way through the next ``times`` answers to ``action`` (None: any)."""
        with self._lock:
            self._disconnects.append((action, times))

    def take_disconnect(self, action: Action) -> bool:
        with self._lock:
            for i, (wanted, left) in enumerate(self._disconnects):
                if wanted is None or wanted is action:
                    if left <= 1:
                        del self._disconnects[i]
                    else:
                        self._disconnects[i] = (wanted, left - 1)
                    return True
        return False

    def take_receive_timeout(self) -> bool:
        with self._lock:
            if self.receive_timeouts > 0:
                self.receive_timeouts -= 1
                return True
        return False


@dataclass(frozen=True)
class RequestRecord:
    action: Action | None  # None: an authentication leg or the empty request that sets up encryption
    with_credentials: bool  # carried an Authorization header
    encrypted: bool


@dataclass(frozen=True)
class CommandRecord:
    command_line: str
    script: str | None  # None: not a PowerShell -EncodedCommand, or too long to run
    stdin: bytes
    via_bootstrap: bool


@dataclass
class ServerLog:
    """What the server saw, for assertions."""

    requests: list[RequestRecord] = field(default_factory=list)
    failed_logins: list[str] = field(default_factory=list)  # the user names that failed
    commands: list[CommandRecord] = field(default_factory=list)
    handler_errors: list[str] = field(default_factory=list)  # a handler that raised: a simulator bug


# ------------------------------------------------------------------------------ shells


@dataclass
class _Command:
    command_line: str
    stdin: bytearray = field(default_factory=bytearray)
    stdin_closed: bool = False
    started: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    pending: list[tuple[str, bytes]] = field(default_factory=list)  # (stream, bytes) not yet received
    exit_code: int = 0


@dataclass
class _Shell:
    user: str
    commands: dict[str, _Command] = field(default_factory=dict)


# ------------------------------------------------------------------------------ the server


class WsmanServer:
    """A WinRM endpoint on 127.0.0.1 (``endpoint``), answering commands with ``handler``."""

    def __init__(
        self,
        handler: Handler,
        *,
        user_file: Path,
        tls: TlsIdentity | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_envelope_size: int = DEFAULT_MAX_ENVELOPE,
        max_operation_wait: float = 60.0,
    ) -> None:
        self.handler = handler
        self.user_file = user_file
        self.tls = tls
        self.max_envelope_size = max_envelope_size
        self.max_operation_wait = max_operation_wait  # caps a client's OperationTimeout
        self.faults = Faults()
        self.log = ServerLog()
        self._shells: dict[str, _Shell] = {}
        self._lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None
        self._bindings: GssChannelBindings | None = None
        if tls is not None:
            self._tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls_context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls_context.load_cert_chain(tls.cert_pem, tls.key_pem)
            self._bindings = channel_bindings(tls.cert_pem)
        self._httpd = _HttpServer((host, port), _Connection, self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/wsman"

    def start(self) -> WsmanServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="wsman", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> WsmanServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def open_shells(self) -> list[str]:
        with self._lock:
            return list(self._shells)

    # -------------------------------------------------------------- operations

    def dispatch(self, envelope: ET.Element, user: str) -> str:
        """The SOAP body (inner XML) answering one request; raises :class:`Fault`."""
        header = envelope.find("s:Header", NS)
        if header is None:
            raise Fault("The SOAP envelope has no header.", subcode="w:InvalidMessageInformationHeader")
        action = action_of(header)
        if action is Action.CREATE:
            shell_id = str(uuid.uuid4()).upper()
            with self._lock:
                self._shells[shell_id] = _Shell(user)
            return (
                f"<x:ResourceCreated><a:Address>{self.endpoint}</a:Address><a:ReferenceParameters>"
                f"<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
                f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
                f"</a:ReferenceParameters></x:ResourceCreated>"
                f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:Owner>{escape(user)}</rsp:Owner>"
                f"<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
                f"</rsp:Shell>"
            )
        shell_id = shell_id_of(header)
        with self._lock:
            shell = self._shells.get(shell_id)
        if shell is None or shell.user != user:
            raise Fault(
                f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not "
                "found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer "
                "exists on the server. Provide the correct ShellId or create a new shell and retry the operation.",
                subcode="w:InvalidSelectors",
                wsman_code=SHELL_NOT_FOUND_CODE,
            )
        body = envelope.find("s:Body", NS)
        if action is Action.DELETE:
            with self._lock:
                self._shells.pop(shell_id, None)
            return ""
        if action is Action.COMMAND:
            return self._command(shell, body)
        if action is Action.SEND:
            return self._send(shell, body)
        if action is Action.RECEIVE:
            return self._receive(shell, body, header)
        return self._signal(shell, body)

    def _command(self, shell: _Shell, body: ET.Element | None) -> str:
        line = body.find("rsp:CommandLine", NS) if body is not None else None
        if line is None:
            raise Fault(
                "The WS-Management service cannot process the request: no CommandLine.",
                subcode="w:SchemaValidationError",
            )
        command = (line.findtext("rsp:Command", "", NS) or "").strip()
        arguments = line.findtext("rsp:Arguments", "", NS) or ""
        command_id = str(uuid.uuid4()).upper()
        with self._lock:
            shell.commands[command_id] = _Command(f"{command} {arguments}".strip())
        return f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"

    def _find_command(self, shell: _Shell, element: ET.Element | None) -> _Command:
        command_id = element.get("CommandId", "") if element is not None else ""
        with self._lock:
            command = shell.commands.get(command_id)
        if command is None:
            raise Fault(
                f"The Windows Remote Shell received a request for a command with CommandId {command_id} that does "
                "not exist.",
                subcode="w:InvalidSelectors",
            )
        return command

    def _send(self, shell: _Shell, body: ET.Element | None) -> str:
        stream = body.find("rsp:Send/rsp:Stream", NS) if body is not None else None
        command = self._find_command(shell, stream)
        assert stream is not None
        if command.stdin_closed or command.started:
            raise Fault("The stdin stream of this command is already closed.", subcode="w:InvalidParameter")
        command.stdin += base64.b64decode(stream.text or "")
        if stream.get("End", "false").lower() == "true":
            command.stdin_closed = True
            self._start(command)
        return "<rsp:SendResponse/>"

    def _receive(self, shell: _Shell, body: ET.Element | None, header: ET.Element) -> str:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS) if body is not None else None
        command = self._find_command(shell, desired)
        assert desired is not None
        if self.faults.take_receive_timeout():
            raise timed_out()
        if not command.started and not command.stdin:
            command.stdin_closed = True  # a command given no input sees end of file at once
            self._start(command)
        if not command.done.wait(min(operation_timeout(header), self.max_operation_wait)):
            raise timed_out()
        command_id = desired.get("CommandId", "")
        budget = (max_envelope(header) - 2048) * 3 // 4  # base64 of what fits, less the envelope itself
        parts = []
        with self._lock:
            while command.pending and budget > 0:
                name, data = command.pending[0]
                piece, rest = data[:budget], data[budget:]
                budget -= len(piece)
                encoded = base64.b64encode(piece).decode()
                parts.append(f'<rsp:Stream Name="{name}" CommandId="{command_id}">{encoded}</rsp:Stream>')
                if rest:
                    command.pending[0] = (name, rest)
                else:
                    command.pending.pop(0)
            finished = not command.pending
        state = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/"
        if finished:
            parts.append(
                f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>'
                f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>'
                f'<rsp:CommandState CommandId="{command_id}" State="{state}Done">'
                f"<rsp:ExitCode>{command.exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            parts.append(f'<rsp:CommandState CommandId="{command_id}" State="{state}Running"/>')
        return f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"

    def _signal(self, shell: _Shell, body: ET.Element | None) -> str:
        signal = body.find("rsp:Signal", NS) if body is not None else None
        command_id = signal.get("CommandId", "") if signal is not None else ""
        with self._lock:
            shell.commands.pop(command_id, None)
        return "<rsp:SignalResponse/>"

    # -------------------------------------------------------------- running a command

    def _start(self, command: _Command) -> None:
        command.started = True
        threading.Thread(target=self._run, args=(command,), name="wsman-command", daemon=True).start()

    def _run(self, command: _Command) -> None:
        result = self._decode_and_handle(command)
        with self._lock:
            if result.stdout:
                command.pending.append(("stdout", result.stdout))
            if result.stderr:
                command.pending.append(("stderr", result.stderr))
            command.exit_code = result.exit_code
        command.done.set()

    def _decode_and_handle(self, command: _Command) -> CommandResult:
        line, stdin = command.command_line, bytes(command.stdin)
        if len(line) > MAX_COMMAND_LINE:
            self.log.commands.append(CommandRecord(line, None, stdin, False))
            return CommandResult(stderr=COMMAND_LINE_TOO_LONG, exit_code=1)
        encoded = encoded_command(line)
        if encoded is None:
            self.log.commands.append(CommandRecord(line, None, stdin, False))
            name = line.split(" ", 1)[0]
            message = (
                f"'{name}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
            )
            return CommandResult(stderr=message.encode(), exit_code=1)
        try:
            script = base64.b64decode(encoded, validate=True).decode("utf-16-le")
        except (ValueError, UnicodeDecodeError):
            return CommandResult(
                stderr=clixml(
                    b"Cannot process the command because the value specified with -EncodedCommand "
                    b"is not properly encoded."
                ),
                exit_code=1,
            )
        via_bootstrap = script == STDIN_BOOTSTRAP
        if via_bootstrap:
            try:
                lines = stdin.decode("ascii").split()
                script = base64.b64decode(lines[0], validate=True).decode("utf-8")
                stdin = base64.b64decode("".join(lines[1:]), validate=True)
            except (ValueError, IndexError, UnicodeDecodeError) as exc:
                return CommandResult(stderr=clixml(f"Exception calling FromBase64String: {exc}".encode()), exit_code=1)
        self.log.commands.append(CommandRecord(line, script, stdin, via_bootstrap))
        try:
            result = self.handler(script, stdin)
        except Exception as exc:
            log.exception("the simulated host's handler failed")
            self.log.handler_errors.append(repr(exc))
            result = CommandResult(stderr=f"simulator handler failed: {exc!r}".encode(), exit_code=1)
        stderr = clixml(result.stderr) if result.stderr else b""
        return CommandResult(result.stdout, stderr, result.exit_code)


# ------------------------------------------------------------------------------ HTTP


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Connection], owner: WsmanServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread, so a slow TLS handshake does not hold up accept().
        context = self.owner._tls_context
        if context is not None:
            try:
                request = context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake from %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)


class _Connection(BaseHTTPRequestHandler):
    """One TCP connection: NTLM authenticates it, so its context lives here."""

    protocol_version = "HTTP/1.1"
    server: _HttpServer
    _context: spnego.ContextProxy | None = None
    _user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("wsman %s: " + format, self.address_string(), *args)

    @property
    def owner(self) -> WsmanServer:
        return self.server.owner

    def do_GET(self) -> None:
        self._reply(405, b"", {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        authorization = self.headers.get("Authorization")
        if authorization is not None:
            self._user = None
            if not self._authenticate(authorization):
                return
        if self._user is None:
            self.owner.log.requests.append(RequestRecord(None, False, False))
            self._reply(401, b"", {"WWW-Authenticate": "Negotiate"})
            return
        content_type = self.headers.get("Content-Type", "")
        encrypted = content_type.startswith("multipart/encrypted")
        if encrypted:
            try:
                assert self._context is not None
                body = unseal(self._context, body)
            except Exception as exc:
                log.debug("undecryptable message: %s", exc)
                self._reply(400, b"", {})
                return
        elif body and self.owner.tls is None:
            self.owner.log.requests.append(RequestRecord(None, authorization is not None, False))
            fault = Fault(
                "The WinRM service refuses unencrypted traffic (AllowUnencrypted = false).",
                subcode="w:AccessDenied",
                wsman_code=2150858770,
            )
            self._respond(500, fault_envelope(fault, ""), False, None)
            return
        if not body:  # pywinrm's empty request that sets up the security context
            self.owner.log.requests.append(RequestRecord(None, authorization is not None, encrypted))
            self._reply(200, b"", {})
            return
        self._soap(body, encrypted, authorization is not None)

    def _soap(self, body: bytes, encrypted: bool, with_credentials: bool) -> None:
        action: Action | None = None
        relates_to = ""
        try:
            if len(body) > self.owner.max_envelope_size:
                raise Fault(
                    "The WS-Management service cannot process the request because the request packet size "
                    f"({len(body)} bytes) exceeds the maximum envelope size ({self.owner.max_envelope_size} bytes).",
                    subcode="w:EncodingLimit",
                    wsman_code=2150858909,
                )
            try:
                root = ET.fromstring(body)
            except ET.ParseError as exc:
                raise Fault(f"The request is not well-formed XML: {exc}", subcode="w:SchemaValidationError") from None
            header = root.find("s:Header", NS)
            relates_to = message_id(header)
            action = action_of(header) if header is not None else None
            self.owner.log.requests.append(RequestRecord(action, with_credentials, encrypted))
            assert self._user is not None
            answer = envelope(f"{action}Response" if action else "", relates_to, self.owner.dispatch(root, self._user))
            status = 200
        except Fault as fault:
            if action is None:
                self.owner.log.requests.append(RequestRecord(None, with_credentials, encrypted))
            answer, status = fault_envelope(fault, relates_to), 500
        self._respond(status, answer, encrypted, action)

    def _respond(self, status: int, answer: bytes, encrypted: bool, action: Action | None) -> None:
        headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
        if encrypted:
            assert self._context is not None
            answer = seal(self._context, answer)
            headers["Content-Type"] = (
                f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
            )
        if action is not None and self.owner.faults.take_disconnect(action):
            self._cut(status, answer, headers)
            return
        self._reply(status, answer, headers)

    def _cut(self, status: int, answer: bytes, headers: dict[str, str]) -> None:
        """Send the headers and half the body, then drop the connection: a network failure mid-answer."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer[: len(answer) // 2])
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    # -------------------------------------------------------------- NTLM

    def _authenticate(self, authorization: str) -> bool:
        """One leg of NTLM. True once authenticated (the request is then served); False after replying."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("negotiate", "ntlm") or not token:
            self.owner.log.requests.append(RequestRecord(None, True, False))
            self._reply(401, b"", {"WWW-Authenticate": "Negotiate"})
            return False
        try:
            data = base64.b64decode(token)
            with acceptor_users(self.owner.user_file):
                if self._context is None or self._context.complete:
                    self._context = spnego.server(
                        protocol="ntlm", service="HTTP", channel_bindings=self.owner._bindings
                    )
                out = self._context.step(data)
        except Exception as exc:  # pyspnego raises its own errors for a wrong password or bad token
            user = ntlm_user(token)
            log.debug("NTLM authentication of %r failed: %s", user, exc)
            self.owner.log.failed_logins.append(user)
            self.owner.log.requests.append(RequestRecord(None, True, False))
            self._context = None
            self._reply(401, b"", {"WWW-Authenticate": "Negotiate"})
            return False
        if not self._context.complete:
            self.owner.log.requests.append(RequestRecord(None, True, False))
            self._reply(401, b"", {"WWW-Authenticate": f"{scheme} {base64.b64encode(out or b'').decode()}"})
            return False
        self._user = self._context.client_principal or "?"
        return True
