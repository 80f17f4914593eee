"""vSphere's SOAP and datastore paths behind a real man in the middle, under each trust mode.

The simulator is reached through ``TlsFront``: a real TLS server on 127.0.0.1 that presents
the certificate the test picks and relays to the simulator. With the genuine certificate it
is vCenter; with any other it is an attacker who reset the connections. vmkeep must refuse
every other certificate on SOAP and on the data path, before and after a first successful
request, name the presented thumbprint, and send nothing to the impostor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.certs import VERIFYING, Pki, case_for
from tests.fixtures.tls_front import TlsFront, tls_front
from tests.fixtures.vcsim import Vcsim, disks, find_vm
from vmkeep.hypervisors.exceptions import UntrustedCertificate
from vmkeep.hypervisors.tls import TrustMode
from vmkeep.hypervisors.vsphere.connection import ConnectionSettings, VSphereConnection
from vmkeep.hypervisors.vsphere.transport import DatastoreFile, HttpFlatTransport

VM = "DC0_H0_VM0"


def disk_file(vc: Vcsim) -> DatastoreFile:
    vm = find_vm(vc.connect(), VM)
    return DatastoreFile.flat_of(disks(vm.config)[0].backing.fileName, "DC0")


def soap_call(conn: VSphereConnection) -> None:
    # The front dropped the pooled connections; drop them here too, so the call makes its new
    # handshake at once instead of after pyVmomi's retry delay.
    conn._stub.soapStub.DropConnections()
    conn.si.CurrentTime()


@pytest.mark.parametrize("mode", VERIFYING, ids=lambda m: m.name.lower())
def test_soap_and_data_refuse_every_other_certificate(
    mode: TrustMode, pki: Pki, system_trust_store: Path, vcsim: Vcsim
) -> None:
    case = case_for(mode, pki)
    file = disk_file(vcsim)
    expected = vcsim.api.read(VM, 0, 65536)
    front: TlsFront
    with tls_front(case.genuine, (vcsim.host, vcsim.port), upstream_tls=True) as front:
        settings = ConnectionSettings(front.address, vcsim.user, vcsim.password, case.policy)

        def assert_refused(attempt: object, kind: str, rogue_sha256: str, when: str) -> None:
            with pytest.raises(UntrustedCertificate) as refused:
                attempt()  # type: ignore[operator]
            assert refused.value.presented_sha256 == rogue_sha256, (kind, when)
            assert rogue_sha256 in str(refused.value), (kind, when)

        for kind, rogue in case.rogues.items():  # SOAP, before any request succeeded
            front.present(rogue)
            assert_refused(lambda: VSphereConnection(settings), kind, rogue.sha256, "login")

        front.present(case.genuine)
        with VSphereConnection(settings) as conn:
            assert conn.ssl_context is not None
            soap_stats = conn.ssl_context.cert_store_stats()
            transport = HttpFlatTransport(conn)
            try:
                for kind, rogue in case.rogues.items():  # data before its first request, SOAP after login
                    front.present(rogue)
                    assert_refused(lambda: transport.read(file, 0, 65536), kind, rogue.sha256, "first data")
                    assert_refused(lambda: soap_call(conn), kind, rogue.sha256, "SOAP after login")
                front.present(case.genuine)
                assert transport.read(file, 0, 65536) == expected
                soap_call(conn)
                assert conn.ssl_context.cert_store_stats() == soap_stats
                for kind, rogue in case.rogues.items():  # both, after successful requests
                    front.present(rogue)
                    assert_refused(lambda: transport.read(file, 0, 65536), kind, rogue.sha256, "later data")
                    assert_refused(lambda: soap_call(conn), kind, rogue.sha256, "later SOAP")
                front.present(case.genuine)
                assert transport.read(file, 65536, 65536) == vcsim.api.read(VM, 65536, 65536)
            finally:
                transport.close()
        for rogue in case.rogues.values():
            assert front.received[rogue.name] == 0, f"vmkeep sent bytes to {rogue.name}"
        assert front.received[case.genuine.name] > 0
