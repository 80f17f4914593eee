# vmkeep-template: checkpoint-disks/1
# The VHDX files a recovery checkpoint froze (the parents the running VM no longer writes to), with
# their size and disk identifier: what a backup reads.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
$NS = 'root\virtualization\v2'
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$snap = @(Get-CimInstance -Namespace $NS -ClassName Msvm_VirtualSystemSettingData | Where-Object { $_.InstanceID -eq $P.snapshot })
if ($snap.Count -ne 1) { Send @{ error = "the recovery checkpoint $($P.snapshot) is gone"; code = 4 } }
$snap = $snap[0]
$disks = @(foreach ($a in @(Get-CimAssociatedInstance -InputObject $snap -ResultClassName Msvm_StorageAllocationSettingData | Where-Object { $_.ResourceType -eq 31 })) {
  $v = Get-VHD -Path $a.HostResource[0]
  @{ path = $a.HostResource[0]; capacity = [int64]$v.Size; vdisk_id = [string]$v.DiskIdentifier }
})
Send @{ disks = $disks }
