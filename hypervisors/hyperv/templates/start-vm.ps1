# vmkeep-template: start-vm/1
# Restore, step 3 (with --power-on): start the new VM once its disks are attached. A VM that runs
# already is left as it is, so the call may be repeated after a lost answer.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$vm = Get-VM -Id ([guid]$P.vm_id)
if ($vm.State -ne 'Running') { Start-VM -VM $vm }
Send @{ state = [string](Get-VM -Id ([guid]$P.vm_id)).State }
