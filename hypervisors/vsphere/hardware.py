"""A VM's hardware as plain data (stored in each recovery point), and back to a CreateVM spec."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from .exceptions import RestoreError

CONTROLLER_TYPES: dict[str, Any] = {
    "pvscsi": vim.vm.device.ParaVirtualSCSIController,
    "lsilogic": vim.vm.device.VirtualLsiLogicController,
    "lsilogic-sas": vim.vm.device.VirtualLsiLogicSASController,
    "buslogic": vim.vm.device.VirtualBusLogicController,
    "sata": vim.vm.device.VirtualAHCIController,
    "nvme": vim.vm.device.VirtualNVMEController,
    "ide": vim.vm.device.VirtualIDEController,
}
NIC_TYPES: dict[str, Any] = {
    "vmxnet3": vim.vm.device.VirtualVmxnet3,
    "vmxnet2": vim.vm.device.VirtualVmxnet2,
    "e1000e": vim.vm.device.VirtualE1000e,
    "e1000": vim.vm.device.VirtualE1000,
    "pcnet32": vim.vm.device.VirtualPCNet32,
}


def _type_name(device: Any, table: dict[str, Any]) -> str | None:
    # Most specific first: VirtualE1000e is not a VirtualE1000, but keep the order safe anyway.
    for name, cls in table.items():
        if type(device) is cls:
            return name
    for name, cls in table.items():
        if isinstance(device, cls):
            return name
    return None


def describe(config: Any, network_names: dict[str, str]) -> dict[str, Any]:
    """CPU, memory, firmware, controllers, disks and NICs of a VM's ``config``.

    ``network_names`` maps a backing's network key (port group key or network moref) to a name.
    """
    hw = config.hardware
    controllers, disks, nics = [], [], []
    for dev in hw.device:
        kind = _type_name(dev, CONTROLLER_TYPES)
        if kind is not None:
            entry: dict[str, Any] = {"key": dev.key, "type": kind, "bus": dev.busNumber}
            if isinstance(dev, vim.vm.device.VirtualSCSIController):
                entry["sharing"] = str(dev.sharedBus)
            controllers.append(entry)
        elif isinstance(dev, vim.vm.device.VirtualDisk):
            backing = dev.backing
            disks.append(
                {
                    "key": dev.key,
                    "label": dev.deviceInfo.label if dev.deviceInfo else "",
                    "controller_key": dev.controllerKey,
                    "unit": dev.unitNumber,
                    "capacity": int(dev.capacityInBytes or dev.capacityInKB * 1024),
                    "thin": bool(getattr(backing, "thinProvisioned", False)),
                    "eager_scrub": bool(getattr(backing, "eagerlyScrub", False)),
                    "mode": str(getattr(backing, "diskMode", "persistent")),
                    "file": getattr(backing, "fileName", ""),
                }
            )
        elif isinstance(dev, vim.vm.device.VirtualEthernetCard):
            nics.append(
                {
                    "key": dev.key,
                    "type": _type_name(dev, NIC_TYPES) or "vmxnet3",
                    "network": _network_name(dev.backing, network_names),
                    "mac": dev.macAddress,
                    "connected": bool(dev.connectable and dev.connectable.startConnected),
                }
            )
    boot = config.bootOptions
    return {
        "name": config.name,
        "guest_id": config.guestId,
        "version": config.version,
        "firmware": config.firmware or "bios",
        "secure_boot": bool(boot and getattr(boot, "efiSecureBootEnabled", False)),
        "num_cpus": hw.numCPU,
        "cores_per_socket": hw.numCoresPerSocket or 1,
        "memory_mb": hw.memoryMB,
        "annotation": config.annotation or "",
        "controllers": controllers,
        "disks": disks,
        "nics": nics,
    }


def _network_name(backing: Any, names: dict[str, str]) -> str:
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        return str(backing.deviceName or "")
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        port: Any = backing.port
        key = str(port.portgroupKey or "")
        return names.get(key, key)
    return ""


def create_spec(
    hardware: dict[str, Any],
    name: str,
    datastore: str,
    networks: dict[str, Any],
    network_map: dict[str, str],
) -> Any:
    """A ``ConfigSpec`` that recreates the recorded hardware with new, empty disks on ``datastore``.

    ``networks`` maps target network names to their objects; ``network_map`` renames the
    recorded networks (``old -> new``). MAC addresses are generated anew, so the restored VM
    can run beside the original.
    """
    recorded_networks = {nic["network"] for nic in hardware.get("nics", [])}
    unused = sorted(set(network_map) - recorded_networks)
    if unused:
        raise RestoreError(
            f"the recorded VM has no NIC on network {unused[0]!r} "
            f"(its networks: {', '.join(sorted(recorded_networks)) or 'none'})"
        )
    changes: list[Any] = []
    controller_keys: dict[int, int] = {}
    for n, ctl in enumerate(hardware.get("controllers", [])):
        cls = CONTROLLER_TYPES.get(ctl["type"])
        if cls is None:
            raise RestoreError(f"unknown controller type {ctl['type']!r} in the recovery point")
        device = cls(key=-(100 + n), busNumber=ctl["bus"])
        if isinstance(device, vim.vm.device.VirtualSCSIController):
            device.sharedBus = ctl.get("sharing", "noSharing")
        controller_keys[ctl["key"]] = device.key
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
    for n, disk in enumerate(hardware.get("disks", [])):
        if disk["controller_key"] not in controller_keys:
            raise RestoreError(f"disk {disk['key']} sits on controller {disk['controller_key']}, not recorded")
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            diskMode="persistent",
            thinProvisioned=disk.get("thin", True),
            eagerlyScrub=disk.get("eager_scrub", False),
            fileName=f"[{datastore}]",
        )
        device = vim.vm.device.VirtualDisk(
            key=-(200 + n),
            controllerKey=controller_keys[disk["controller_key"]],
            unitNumber=disk["unit"],
            capacityInKB=-(-disk["capacity"] // 1024),
            capacityInBytes=disk["capacity"],
            backing=backing,
        )
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=device))
    for n, nic in enumerate(hardware.get("nics", [])):
        target = network_map.get(nic["network"], nic["network"])
        network = networks.get(target)
        if network is None:
            known = ", ".join(sorted(networks)) or "none"
            raise RestoreError(
                f"network {target!r} does not exist on the target (networks: {known}); "
                f"pass --network {nic['network']}=NAME"
            )
        device = NIC_TYPES.get(nic["type"], vim.vm.device.VirtualVmxnet3)(key=-(300 + n))
        device.backing = _nic_backing(network)
        device.addressType = "generated"
        device.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=nic.get("connected", True), allowGuestControl=True
        )
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId=hardware.get("guest_id") or "otherGuest",
        numCPUs=hardware.get("num_cpus", 1),
        numCoresPerSocket=hardware.get("cores_per_socket", 1),
        memoryMB=hardware.get("memory_mb", 1024),
        firmware=hardware.get("firmware", "bios"),
        annotation=hardware.get("annotation", ""),
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=changes,
    )
    if hardware.get("version"):
        spec.version = hardware["version"]
    if hardware.get("secure_boot"):
        spec.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=True)
    return spec


def _nic_backing(network: Any) -> Any:
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        switch: Any = network.config.distributedVirtualSwitch
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(portgroupKey=network.key, switchUuid=switch.uuid)
        )
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network.name, network=network)
