# vmkeep-template: destroy-reference-point/1
# Msvm_VirtualSystemReferencePointService.DestroyReferencePoint on the VM's reference point with
# this InstanceID. A reference point already gone is not an error (answers gone = true).
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
$NS = 'root\virtualization\v2'
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$rp = @(Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemReferencePoint | Where-Object { $_.InstanceID -eq $P.reference_point })
if ($rp.Count -eq 0) { Send @{ gone = $true } }
$svc = Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemReferencePointService
$r = Invoke-CimMethod -InputObject $svc -MethodName DestroyReferencePoint -Arguments @{ AffectedReferencePoint = $rp[0] }
if ($r.ReturnValue -eq 4096) {
  $j = Get-CimInstance -InputObject $r.Job
  while ($j.JobState -eq 3 -or $j.JobState -eq 4) { Start-Sleep -Milliseconds 200; $j = Get-CimInstance -InputObject $j }
  if ($j.JobState -ne 7) { Send @{ error = "DestroyReferencePoint failed: $($j.ErrorDescription)"; code = [int64]$j.ErrorCode; state = [int]$j.JobState } }
} elseif ($r.ReturnValue -ne 0) { Send @{ error = "DestroyReferencePoint failed with return value $($r.ReturnValue)"; code = [int64]$r.ReturnValue } }
Send @{ gone = $false }
