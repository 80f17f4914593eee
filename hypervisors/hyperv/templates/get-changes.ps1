# vmkeep-template: get-changes/1
# One call of Msvm_ImageManagementService.GetVirtualDiskChanges: the ranges of the frozen VHDX that
# changed since the RCT id LimitId, from ByteOffset on. The caller loops on ProcessedByteLength.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
$NS = 'root\virtualization\v2'
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$svc = Get-CimInstance -Namespace $NS -ClassName Msvm_ImageManagementService
$snap = @(Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSettingData | Where-Object { $_.InstanceID -eq $P.snapshot })
if ($snap.Count -ne 1) { Send @{ error = "the recovery checkpoint $($P.snapshot) is gone"; code = 4 } }
$args2 = @{ Path = $P.path; LimitId = $P.limit_id; TargetSnapshot = $snap[0]; ByteOffset = [uint64]$P.offset; ByteLength = [uint64]$P.length }
$r = Invoke-CimMethod -InputObject $svc -MethodName GetVirtualDiskChanges -Arguments $args2
if ($r.ReturnValue -eq 4096) {
  $j = Get-CimInstance -InputObject $r.Job
  while ($j.JobState -eq 3 -or $j.JobState -eq 4) { Start-Sleep -Milliseconds 100; $j = Get-CimInstance -InputObject $j }
  if ($j.JobState -ne 7) { Send @{ error = "GetVirtualDiskChanges failed: $($j.ErrorDescription)"; code = [int64]$j.ErrorCode; state = [int]$j.JobState } }
} elseif ($r.ReturnValue -ne 0) { Send @{ error = "GetVirtualDiskChanges failed with return value $($r.ReturnValue)"; code = [int64]$r.ReturnValue } }
Send @{ processed = [int64]$r.ProcessedByteLength; offsets = @($r.ChangedByteOffsets | ForEach-Object { [int64]$_ }); lengths = @($r.ChangedByteLengths | ForEach-Object { [int64]$_ }) }
