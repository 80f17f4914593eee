"""The simulated host's WinRM server against the unmodified pywinrm client (Protocol and Session.run_ps)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
import winrm
from winrm.exceptions import InvalidCredentialsError, WSManFaultError
from winrm.protocol import Protocol

from tests.fixtures.hyperv import HypervAccount
from vmkeep.hypervisors.hyperv.simulator.soap import Action, clixml
from vmkeep.hypervisors.hyperv.simulator.wsman import STDIN_BOOTSTRAP, CommandResult, WsmanServer, encoded_command

Start = Callable[..., WsmanServer]


def echo(script: str, stdin: bytes) -> CommandResult:
    return CommandResult(stdout=f"script={script};stdin={stdin.decode()}".encode())


def session(server: WsmanServer, account: HypervAccount, password: str | None = None) -> winrm.Session:
    return winrm.Session(
        server.endpoint,
        auth=(account.qualified, account.password if password is None else password),
        transport="ntlm",
        message_encryption="always",
        ca_trust_path=None,  # plain http; and no warning about REQUESTS_CA_BUNDLE
    )


def protocol(server: WsmanServer, account: HypervAccount, **kwargs: object) -> Protocol:
    params: dict[str, object] = {"transport": "ntlm", "message_encryption": "always", "ca_trust_path": None}
    params.update(kwargs)
    return Protocol(server.endpoint, username=account.qualified, password=account.password, **params)  # type: ignore[arg-type]


def test_run_ps_round_trips_over_ntlm_with_encryption(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    result = session(server, hyperv_account).run_ps("Get-VM | ConvertTo-Json")
    assert (result.status_code, result.std_out, result.std_err) == (0, b"script=Get-VM | ConvertTo-Json;stdin=", b"")
    soap = [r for r in server.log.requests if r.action is not None]
    # run_ps's five envelopes, every one sealed with the NTLM session keys
    assert [r.action for r in soap] == [Action.CREATE, Action.COMMAND, Action.RECEIVE, Action.SIGNAL, Action.DELETE]
    assert all(r.encrypted for r in soap)
    assert server.open_shells() == []


def test_protocol_with_stdin_in_parts(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    p = protocol(server, hyperv_account)
    shell = p.open_shell()
    command = p.run_command(shell, "powershell -NoProfile -EncodedCommand " + _encode("Read-Input"))
    p.send_command_input(shell, command, b"first ")
    p.send_command_input(shell, command, b"second", end=True)
    out, err, code = p.get_command_output(shell, command)
    p.cleanup_command(shell, command)  # asserts RelatesTo == MessageID
    p.close_shell(shell)  # asserts it too
    assert (out, err, code) == (b"script=Read-Input;stdin=first second", b"", 0)


def test_wrong_password_is_http_401(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    with pytest.raises(InvalidCredentialsError):
        session(server, hyperv_account, password="not-the-password").run_ps("hostname")
    assert server.log.failed_logins == [hyperv_account.qualified]
    assert server.log.commands == []


def test_command_line_over_8191_characters_fails_like_cmd(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    calls: list[str] = []

    def handler(script: str, stdin: bytes) -> CommandResult:
        calls.append(script)
        return CommandResult()

    server = wsman_factory(handler)
    result = session(server, hyperv_account).run_ps("'x' * 1; " * 400)  # ~4000 characters, ~10700 encoded
    assert (result.status_code, result.std_err) == (1, b"The command line is too long.\r\n")
    assert calls == []
    assert len(server.log.commands[0].command_line) > 8191


def test_stderr_is_clixml_and_pywinrm_cleans_it(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    def failing(script: str, stdin: bytes) -> CommandResult:
        return CommandResult(stdout=b"partial", stderr=b"Get-VM : no VM named 'a<b>'\nAt line:1 char:1", exit_code=1)

    server = wsman_factory(failing)
    p = protocol(server, hyperv_account)
    shell = p.open_shell()
    command = p.run_command(shell, "powershell -EncodedCommand " + _encode("Get-VM a"))
    _, raw_err, _ = p.get_command_output(shell, command)
    p.close_shell(shell)
    assert raw_err.startswith(b"#< CLIXML\r\n<Objs ")
    result = session(server, hyperv_account).run_ps("Get-VM a")
    assert result.status_code == 1
    assert result.std_err == b"Get-VM : no VM named 'a<b>'\nAt line:1 char:1"


def test_large_output_comes_in_envelope_sized_receives(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    server = wsman_factory(lambda script, stdin: CommandResult(stdout=payload))
    assert session(server, hyperv_account).run_ps("read").std_out == payload
    receives = [r for r in server.log.requests if r.action is Action.RECEIVE]
    assert len(receives) >= 1024 * 1024 * 4 // 3 // 153600 + 1


def test_request_over_the_envelope_limit_is_a_fault(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo, max_envelope_size=100_000)
    p = protocol(server, hyperv_account)
    shell = p.open_shell()
    command = p.run_command(shell, "powershell -EncodedCommand " + _encode("x"))
    with pytest.raises(WSManFaultError, match="maximum envelope size") as caught:
        p.send_command_input(shell, command, b"y" * 120_000, end=True)
    assert caught.value.fault_subcode == "w:EncodingLimit"
    p.close_shell(shell)


def test_unknown_shell_is_a_wsman_fault(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    with pytest.raises(WSManFaultError, match="shell was not found") as caught:
        protocol(server, hyperv_account).run_command("0B1D3F2E-0000-0000-0000-000000000000", "hostname")
    assert caught.value.wsman_fault_code == 2150858843


def test_receive_timeout_fault_is_polled_again(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    server.faults.receive_timeouts = 3
    assert session(server, hyperv_account).run_ps("slow").std_out == b"script=slow;stdin="
    assert [r.action for r in server.log.requests].count(Action.RECEIVE) == 4


def test_unencrypted_soap_over_http_is_refused(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    with pytest.raises(WSManFaultError, match="unencrypted"):
        protocol(server, hyperv_account, message_encryption="never").open_shell()
    assert server.open_shells() == []


def test_disconnect_closes_the_connection_mid_answer(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    import requests

    server = wsman_factory(echo)
    server.faults.disconnect(Action.CREATE)
    with pytest.raises(requests.exceptions.RequestException):
        session(server, hyperv_account).run_ps("x")
    # the fault fired once: the next client is served
    assert session(server, hyperv_account).run_ps("x").status_code == 0


def test_bootstrap_is_unpacked_into_script_and_input(wsman_factory: Start, hyperv_account: HypervAccount) -> None:
    server = wsman_factory(echo)
    p = protocol(server, hyperv_account)
    shell = p.open_shell()
    command = p.run_command(shell, "powershell -EncodedCommand " + _encode(STDIN_BOOTSTRAP))
    stdin = base64.b64encode("Write-Output 'ü'".encode()) + b"\r\n" + base64.b64encode(b"data") + b"\r\n"
    p.send_command_input(shell, command, stdin, end=True)
    out, _, _ = p.get_command_output(shell, command)
    p.close_shell(shell)
    assert out == "script=Write-Output 'ü';stdin=data".encode()
    assert server.log.commands[0].via_bootstrap


def test_encoded_command_parsing() -> None:
    assert encoded_command("powershell -NoProfile -NonInteractive -EncodedCommand QQA=") == "QQA="
    assert encoded_command("PowerShell.exe -enc QQA=") == "QQA="
    assert encoded_command("cmd /c dir") is None
    assert encoded_command("powershell -Command Get-VM") is None


def test_clixml_escapes_markup_and_control_characters() -> None:
    assert clixml(b"a<b>&_x\x01") == (
        b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        b'<S S="Error">a&lt;b&gt;&amp;_x005F_x_x0001__x000D__x000A_</S></Objs>'
    )


def _encode(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode()
