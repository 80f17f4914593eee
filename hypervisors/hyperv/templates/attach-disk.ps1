# vmkeep-template: attach-disk/1
# Restore, step 2: attach an uploaded VHDX to the new VM at the recorded controller and location
# (adding SCSI controllers up to the one named).
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$vm = Get-VM -Id ([guid]$P.vm_id)
if ($P.controller -eq 'SCSI') {
  while (@(Get-VMScsiController -VM $vm).Count -le [int]$P.controller_number) { Add-VMScsiController -VM $vm }
}
Add-VMHardDiskDrive -VM $vm -ControllerType $P.controller -ControllerNumber ([int]$P.controller_number) -ControllerLocation ([int]$P.location) -Path $P.path
Send @{ attached = $P.path }
