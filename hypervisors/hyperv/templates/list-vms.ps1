# vmkeep-template: list-vms/1
# The host's VMs: state, generation, CPU, memory, disks (Get-VHD), switches, checkpoints. Answers one JSON object.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$vms = @(foreach ($vm in @(Get-VM)) {
  if ($P.vm -and $vm.Name -ne $P.vm) { continue }
  $disks = @(foreach ($d in @(Get-VMHardDiskDrive -VM $vm)) {
    if (-not $d.Path) { continue }
    $v = Get-VHD -Path $d.Path
    @{ controller = [string]$d.ControllerType; controller_number = [int]$d.ControllerNumber
       location = [int]$d.ControllerLocation; path = $d.Path; capacity = [int64]$v.Size
       vdisk_id = [string]$v.DiskIdentifier; format = [string]$v.VhdFormat }
  })
  $nics = @(foreach ($n in @(Get-VMNetworkAdapter -VM $vm)) { @{ name = $n.Name; switch = [string]$n.SwitchName } })
  $cps = @(foreach ($s in @(Get-VMSnapshot -VM $vm)) { @{ id = [string]$s.Id; name = $s.Name; type = [string]$s.SnapshotType } })
  @{ name = $vm.Name; id = [string]$vm.Id; state = [string]$vm.State; generation = [int]$vm.Generation
     version = [string]$vm.Version; cpu = [int]$vm.ProcessorCount; memory_mb = [int64]($vm.MemoryStartup / 1048576)
     disks = $disks; nics = $nics; checkpoints = $cps }
})
Send @{ host = $env:COMPUTERNAME; vhd_path = (Get-VMHost).VirtualHardDiskPath; vms = $vms }
