"""The agent's WinRM client (hypervisors/hyperv/winrm.py) against the simulated host's WinRM server."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

import pytest

from tests.fixtures.certs import Pki
from tests.fixtures.hyperv import HypervAccount
from vmkeep.hypervisors.exceptions import CleartextRefused, UntrustedCertificate
from vmkeep.hypervisors.hyperv import winrm as client_module
from vmkeep.hypervisors.hyperv.exceptions import AuthenticationFailed, CommandFailed, ConnectionFailed
from vmkeep.hypervisors.hyperv.simulator.soap import Action, clixml
from vmkeep.hypervisors.hyperv.simulator.wsman import STDIN_BOOTSTRAP, CommandResult, TlsIdentity, WsmanServer
from vmkeep.hypervisors.hyperv.winrm import MAX_COMMAND_LINE, WinrmClient, WinrmSettings, clean_stderr
from vmkeep.hypervisors.tls import TlsPolicy

Start = Callable[..., WsmanServer]
Settings = Callable[..., WinrmSettings]


class Recorder:
    """A handler that keeps what it was given and answers with the script's length."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def __call__(self, script: str, stdin: bytes) -> CommandResult:
        self.calls.append((script, stdin))
        return CommandResult(stdout=f"{len(script)}:{len(stdin)}".encode())


def test_many_commands_share_one_authenticated_session(wsman_factory: Start, winrm_settings: Settings) -> None:
    handler = Recorder()
    server = wsman_factory(handler)
    with WinrmClient(winrm_settings(server)) as client:
        assert [client.run(f"Get-VM -Id {i}") for i in range(3)] == [b"12:0", b"12:0", b"12:0"]
    assert [script for script, _ in handler.calls] == [f"Get-VM -Id {i}" for i in range(3)]
    # NTLM ran once (negotiate, authenticate) for the three commands; every SOAP request encrypted
    assert sum(r.with_credentials for r in server.log.requests) == 2
    assert all(r.encrypted for r in server.log.requests if r.action is not None)
    assert server.open_shells() == []


def test_wrong_password_is_one_clear_error(
    wsman_factory: Start, winrm_settings: Settings, hyperv_account: HypervAccount
) -> None:
    server = wsman_factory(Recorder())
    client = WinrmClient(winrm_settings(server, password="wrong-" + hyperv_account.password))
    with pytest.raises(AuthenticationFailed) as caught:
        client.run("hostname")
    message = str(caught.value)
    assert "\n" not in message and "refused the user 'HyperVHost\\\\vmkeep'" in message
    assert hyperv_account.password not in message
    assert server.log.commands == []


def test_long_script_goes_on_stdin(wsman_factory: Start, winrm_settings: Settings) -> None:
    handler = Recorder()
    server = wsman_factory(handler)
    script = "# a long template\n" + "$x = 'Hyper-V'\n" * 600  # ~9 KB: ~24 KB as -EncodedCommand
    assert len(client_module.encode_command(script)) > MAX_COMMAND_LINE
    WinrmClient(winrm_settings(server)).run(script)
    assert handler.calls == [(script, b"")]
    (record,) = server.log.commands
    assert record.via_bootstrap and len(record.command_line) <= MAX_COMMAND_LINE


def test_input_is_sent_in_parts(wsman_factory: Start, winrm_settings: Settings) -> None:
    handler = Recorder()
    server = wsman_factory(handler)
    data = bytes(range(256)) * 1024  # 256 KiB, ~350 KB as base64 on stdin
    assert WinrmClient(winrm_settings(server)).run("Use-Input", stdin=data) == f"9:{len(data)}".encode()
    assert handler.calls == [("Use-Input", data)]
    assert [r.action for r in server.log.requests].count(Action.SEND) > 1


def test_bootstrap_is_the_one_the_simulator_pins() -> None:
    assert client_module.STDIN_BOOTSTRAP == STDIN_BOOTSTRAP


def test_failed_command_has_clean_stderr_without_the_parameter_literal(
    wsman_factory: Start, winrm_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    literal = base64.b64encode(json.dumps({"vm": "secret-project-db", "path": "D:\\VMs\\db.vhdx"}).encode()).decode()
    script = f"$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{literal}')))"

    def failing(script: str, stdin: bytes) -> CommandResult:
        return CommandResult(
            stderr=f"Get-VM : Hyper-V was unable to find a virtual machine.\nAt line:1 char:1\n+ {script}".encode(),
            exit_code=1,
        )

    server = wsman_factory(failing)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CommandFailed) as caught:
        WinrmClient(winrm_settings(server)).run(script)
    assert str(caught.value) == (
        "a PowerShell command on 127.0.0.1 failed (exit code 1): Get-VM : Hyper-V was unable to find a virtual machine."
    )
    assert caught.value.exit_code == 1
    assert caught.value.stderr.splitlines()[1:] == [
        "At line:1 char:1",
        "+ $P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('<...>')))",
    ]
    assert literal not in caplog.text


def test_disconnect_gives_up_after_bounded_retries(wsman_factory: Start, winrm_settings: Settings) -> None:
    server = wsman_factory(Recorder())
    server.faults.disconnect(Action.CREATE, times=100)
    with pytest.raises(ConnectionFailed, match="gave up after 3 attempts"):
        WinrmClient(winrm_settings(server, attempts=3)).run("hostname")
    assert [r.action for r in server.log.requests].count(Action.CREATE) == 3
    assert server.log.commands == []


def test_disconnect_during_an_idempotent_command_is_retried(wsman_factory: Start, winrm_settings: Settings) -> None:
    handler = Recorder()
    server = wsman_factory(handler)
    server.faults.disconnect(Action.RECEIVE)
    assert WinrmClient(winrm_settings(server)).run("Get-VM", idempotent=True) == b"6:0"
    assert len(handler.calls) == 2  # it ran again, on a new session


def test_disconnect_during_a_changing_command_is_not_run_again(wsman_factory: Start, winrm_settings: Settings) -> None:
    handler = Recorder()
    server = wsman_factory(handler)
    server.faults.disconnect(Action.RECEIVE)
    with pytest.raises(ConnectionFailed, match="not running it again"):
        WinrmClient(winrm_settings(server)).run("Checkpoint-VM")
    assert len(handler.calls) == 1


def test_unreachable_host_is_connection_failed(winrm_settings: Settings, wsman_factory: Start) -> None:
    server = wsman_factory(Recorder())
    endpoint = server.endpoint
    server.stop()
    with pytest.raises(ConnectionFailed, match="gave up after 2 attempts"):
        WinrmClient(winrm_settings(server, endpoint=endpoint, attempts=2)).run("hostname")


def test_https_with_a_ca_file(wsman_factory: Start, winrm_settings: Settings, pki: Pki) -> None:
    handler = Recorder()
    server = wsman_factory(handler, tls=TlsIdentity(pki.private_leaf.cert_pem, pki.private_leaf.key_pem))
    settings = winrm_settings(server, tls=TlsPolicy(ca_file=pki.private_ca.cert_pem))
    assert WinrmClient(settings).run("Get-VM") == b"6:0"
    # TLS protects the messages; NTLM's channel binding to the certificate was checked by the server
    assert not any(r.encrypted for r in server.log.requests)


def test_https_with_the_pinned_thumbprint(wsman_factory: Start, winrm_settings: Settings, pki: Pki) -> None:
    server = wsman_factory(Recorder(), tls=TlsIdentity(pki.pinned.cert_pem, pki.pinned.key_pem))
    assert WinrmClient(winrm_settings(server, tls=TlsPolicy(thumbprint=pki.pinned.sha256))).run("Get-VM") == b"6:0"


def test_wrong_thumbprint_is_refused_before_credentials_are_sent(
    wsman_factory: Start, winrm_settings: Settings, pki: Pki
) -> None:
    server = wsman_factory(Recorder(), tls=TlsIdentity(pki.pinned.cert_pem, pki.pinned.key_pem))
    client = WinrmClient(winrm_settings(server, tls=TlsPolicy(thumbprint=pki.other_self_signed.sha256)))
    with pytest.raises(UntrustedCertificate, match="not the pinned"):
        client.run("Get-VM")
    assert server.log.requests == []


def test_certificate_from_another_ca_is_refused(wsman_factory: Start, winrm_settings: Settings, pki: Pki) -> None:
    server = wsman_factory(Recorder(), tls=TlsIdentity(pki.public_leaf.cert_pem, pki.public_leaf.key_pem))
    client = WinrmClient(winrm_settings(server, tls=TlsPolicy(ca_file=pki.private_ca.cert_pem)))
    with pytest.raises(UntrustedCertificate, match="not trusted by the CAs in"):
        client.run("Get-VM")
    assert server.log.requests == []


def test_tls_options_with_plain_http_are_refused(wsman_factory: Start, winrm_settings: Settings, pki: Pki) -> None:
    server = wsman_factory(Recorder())
    with pytest.raises(CleartextRefused, match="need"):
        WinrmClient(winrm_settings(server, tls=TlsPolicy(ca_file=pki.private_ca.cert_pem)))


def test_password_never_logged(
    wsman_factory: Start, winrm_settings: Settings, hyperv_account: HypervAccount, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = wsman_factory(Recorder())
    server.faults.disconnect(Action.CREATE, times=1)
    settings = winrm_settings(server)
    WinrmClient(settings).run("hostname")
    with pytest.raises(AuthenticationFailed):
        WinrmClient(winrm_settings(server, password=hyperv_account.password + "x")).run("hostname")
    assert hyperv_account.password not in caplog.text
    assert hyperv_account.password not in repr(settings)


def test_clean_stderr_reads_clixml() -> None:
    assert clean_stderr(clixml(b"first\nsecond <&>")) == "first\nsecond <&>"
    assert clean_stderr(b"The command line is too long.\r\n") == "The command line is too long."
