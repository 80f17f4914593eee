# vmkeep-template: convert-checkpoint/1
# Msvm_VirtualSystemSnapshotService.ConvertToReferencePoint: merges the recovery checkpoint and
# answers the new reference point with each disk's RCT id (parallel arrays, as WMI gives them).
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
$NS = 'root\virtualization\v2'
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$snap = @(Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSettingData | Where-Object { $_.InstanceID -eq $P.snapshot })
if ($snap.Count -ne 1) { Send @{ error = "the recovery checkpoint $($P.snapshot) is gone"; code = 4 } }
$svc = Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSnapshotService
$r = Invoke-CimMethod -InputObject $svc -MethodName ConvertToReferencePoint -Arguments @{ AffectedSnapshot = $snap[0] }
if ($r.ReturnValue -eq 4096) {
  $j = Get-CimInstance -InputObject $r.Job
  while ($j.JobState -eq 3 -or $j.JobState -eq 4) { Start-Sleep -Milliseconds 200; $j = Get-CimInstance -InputObject $j }
  if ($j.JobState -ne 7) { Send @{ error = "ConvertToReferencePoint failed: $($j.ErrorDescription)"; code = [int64]$j.ErrorCode; state = [int]$j.JobState } }
  $rp = Get-CimAssociatedInstance -InputObject $j -ResultClassName Msvm_VirtualSystemReferencePoint
} elseif ($r.ReturnValue -ne 0) { Send @{ error = "ConvertToReferencePoint failed with return value $($r.ReturnValue)"; code = [int64]$r.ReturnValue } }
else { $rp = Get-CimInstance -InputObject $r.ResultingReferencePoint }
Send @{ reference_point = $rp.InstanceID; vdisk_ids = @($rp.VirtualDiskIdentifiers); rct_ids = @($rp.ResilientChangeTrackingIdentifiers) }
