"""WS-Management messages as the simulated WinRM service reads and writes them.

The namespaces, the shell actions, a fault and its SOAP envelope, what the service reads from a
request's header (action, ShellId, OperationTimeout, MaxEnvelopeSize, MessageID), and stderr in
CLIXML, as powershell.exe writes it when its output is redirected.
"""

from __future__ import annotations

import enum
import re
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

OPERATION_TIMEOUT_CODE = 2150858793  # WSMan "the operation timed out"; a client polls again

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
}


class Action(enum.StrEnum):
    CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
    DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
    COMMAND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
    SEND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send"
    RECEIVE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
    SIGNAL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"


class Fault(Exception):
    """A WS-Man fault to answer with (HTTP 500, a SOAP Fault with a WSManFault detail)."""

    def __init__(self, reason: str, *, subcode: str, code: str = "s:Sender", wsman_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.subcode, self.code, self.wsman_code = reason, subcode, code, wsman_code


def timed_out() -> Fault:
    return Fault(
        "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
        subcode="w:TimedOut",
        code="s:Receiver",
        wsman_code=OPERATION_TIMEOUT_CODE,
    )


def action_of(header: ET.Element) -> Action:
    text = (header.findtext("a:Action", "", NS) or "").strip()
    try:
        return Action(text)
    except ValueError:
        raise Fault(
            f"The WS-Management service cannot process the request because the action {text!r} is not supported.",
            subcode="a:ActionNotSupported",
        ) from None


def shell_id_of(header: ET.Element) -> str:
    for selector in header.iterfind("w:SelectorSet/w:Selector", NS):
        if selector.get("Name") == "ShellId":
            return (selector.text or "").strip()
    raise Fault(
        "The WS-Management service cannot process the request: no ShellId selector.", subcode="w:InvalidSelectors"
    )


def operation_timeout(header: ET.Element) -> float:
    text = header.findtext("w:OperationTimeout", "", NS) or ""
    match = re.fullmatch(r"\s*PT(\d+(?:\.\d+)?)S\s*", text)
    return float(match[1]) if match else 60.0


def max_envelope(header: ET.Element) -> int:
    text = header.findtext("w:MaxEnvelopeSize", "", NS) or ""
    return int(text) if text.strip().isdigit() else 153600


def message_id(header: ET.Element | None) -> str:
    return (header.findtext("a:MessageID", "", NS) or "").strip() if header is not None else ""


def envelope(action: str, relates_to: str, body: str) -> bytes:
    """A response envelope with ``body`` as the SOAP body's content."""
    namespaces = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items())
    return (
        f'<s:Envelope xml:lang="en-US" {namespaces}><s:Header>'
        f"<a:Action>{action}</a:Action><a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_envelope(fault: Fault, relates_to: str) -> bytes:
    detail = ""
    if fault.wsman_code is not None:
        detail = (
            '<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
            f'Code="{fault.wsman_code}" Machine="127.0.0.1"><f:Message>{escape(fault.reason)}</f:Message>'
            "</f:WSManFault></s:Detail>"
        )
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.code}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode>"
        f'</s:Code><s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>{detail}</s:Fault>'
    )
    return envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


def clixml(text: bytes) -> bytes:
    """Stderr as powershell.exe writes it when its output is redirected: CLIXML error records."""
    lines = text.decode("utf-8", "replace").splitlines() or [""]
    records = "".join(f'<S S="Error">{_clixml_escape(line)}_x000D__x000A_</S>' for line in lines)
    return (
        b"#< CLIXML\r\n"
        + f'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">{records}</Objs>'.encode()
    )


def _clixml_escape(line: str) -> str:
    out = escape(line.replace("_x", "_x005F_x"))
    return "".join(f"_x{ord(c):04X}_" if ord(c) < 0x20 and c != "\t" else c for c in out)
