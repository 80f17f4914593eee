# vmkeep-template: begin-backup/1
# Removes leftover recovery checkpoints, takes one (CreateSnapshot type 32768), answers its id.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
$NS = 'root\virtualization\v2'; $RT = 'Microsoft:Hyper-V:Snapshot:Recovery'
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
function Wait-Call($r, $what) {
  if ($r.ReturnValue -eq 4096) {
    $j = Get-CimInstance -InputObject $r.Job
    while ($j.JobState -eq 3 -or $j.JobState -eq 4) { Start-Sleep -Milliseconds 200; $j = Get-CimInstance -InputObject $j }
    if ($j.JobState -ne 7) { Send @{ error = "$what failed: $($j.ErrorDescription)"; code = [int64]$j.ErrorCode; state = [int]$j.JobState } }
  } elseif ($r.ReturnValue -ne 0) { Send @{ error = "$what failed with return value $($r.ReturnValue)"; code = [int64]$r.ReturnValue } }
}
$vm = @(Get-CimInstance -Namespace $NS -ClassName Msvm_ComputerSystem | Where-Object { $_.Caption -eq 'Virtual Machine' -and $_.ElementName -eq $P.vm })
if ($vm.Count -ne 1) { Send @{ error = "found $($vm.Count) VMs named $($P.vm)"; code = 2 } }
$vm = $vm[0]
$svc = Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSnapshotService
$removed = @()
foreach ($s in @(Get-CimAssociatedInstance -InputObject $vm -Association Msvm_SnapshotOfVirtualSystem -ResultClassName Msvm_VirtualSystemSettingData)) {
  if ($s.VirtualSystemType -ne $RT) { Send @{ error = "$($P.vm) has a checkpoint of its own ($($s.ElementName))"; code = 3 } }
  Wait-Call (Invoke-CimMethod -InputObject $svc -MethodName DestroySnapshot -Arguments @{ AffectedSnapshot = $s }) 'removing a leftover recovery checkpoint'
  $removed += $s.ElementName
}
$cls = Get-CimClass -Namespace $NS -ClassName Msvm_VirtualSystemSnapshotSettingData
$set = New-CimInstance -CimClass $cls -ClientOnly -Property @{ ConsistencyLevel = [uint16]$P.consistency; IgnoreNonSnapshottableDisks = $true; GuestBackupType = [uint16]1 }
$S = 'Microsoft.Management.Infrastructure.Serialization'
$mof = [Text.Encoding]::Unicode.GetString(([type]"$S.CimSerializer")::Create().Serialize($set, ([type]"$S.InstanceSerializationOptions")::None))
$r = Invoke-CimMethod -InputObject $svc -MethodName CreateSnapshot -Arguments @{ AffectedSystem = $vm; SnapshotSettings = $mof; SnapshotType = [uint16]32768 }
Wait-Call $r 'creating the recovery checkpoint'
$snap = @(Get-CimAssociatedInstance -InputObject $vm -Association Msvm_SnapshotOfVirtualSystem -ResultClassName Msvm_VirtualSystemSettingData | Where-Object { $_.VirtualSystemType -eq $RT })[0]
Send @{ snapshot = $snap.InstanceID; name = $snap.ElementName; removed = $removed }
