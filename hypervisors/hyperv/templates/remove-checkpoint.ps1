# vmkeep-template: remove-checkpoint/1
# Msvm_VirtualSystemSnapshotService.DestroySnapshot on our recovery checkpoint (merging it back
# into the VM's disks). A checkpoint already gone is not an error (answers gone = true).
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
$NS = 'root\virtualization\v2'
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$snap = @(Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSettingData | Where-Object { $_.InstanceID -eq $P.snapshot })
if ($snap.Count -eq 0) { Send @{ gone = $true } }
$svc = Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSnapshotService
$r = Invoke-CimMethod -InputObject $svc -MethodName DestroySnapshot -Arguments @{ AffectedSnapshot = $snap[0] }
if ($r.ReturnValue -eq 4096) {
  $j = Get-CimInstance -InputObject $r.Job
  while ($j.JobState -eq 3 -or $j.JobState -eq 4) { Start-Sleep -Milliseconds 200; $j = Get-CimInstance -InputObject $j }
  if ($j.JobState -ne 7) { Send @{ error = "DestroySnapshot failed: $($j.ErrorDescription)"; code = [int64]$j.ErrorCode; state = [int]$j.JobState } }
} elseif ($r.ReturnValue -ne 0) { Send @{ error = "DestroySnapshot failed with return value $($r.ReturnValue)"; code = [int64]$r.ReturnValue } }
Send @{ gone = $false }
