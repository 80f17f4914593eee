# vmkeep-template: remove-vm/1
# Restore failed: remove the VM it created (turned off first). Its VHDX files are not deleted here.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$vm = @(Get-VM | Where-Object { [string]$_.Id -eq $P.vm_id })
if ($vm.Count -eq 0) { Send @{ gone = $true } }
if ($vm[0].State -ne 'Off') { Stop-VM -VM $vm[0] -TurnOff -Force }
Remove-VM -VM $vm[0] -Force
Send @{ gone = $false }
