# vmkeep-template: create-vm/1
# Restore, step 1: a new VM with the recorded generation, CPU, memory and network adapters (no disks
# yet: attach-disk adds them). Never touches an existing VM; removes the new one if a step fails.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
if (@(Get-VM | Where-Object { $_.Name -eq $P.name }).Count -gt 0) { Send @{ error = "a VM named $($P.name) exists already"; code = 5 } }
$vm = New-VM -Name $P.name -Generation ([int16]$P.generation) -MemoryStartupBytes ([int64]$P.memory_mb * 1048576) -NoVHD
try {
  Set-VMProcessor -VM $vm -Count ([int64]$P.cpu)
  Get-VMNetworkAdapter -VM $vm | Remove-VMNetworkAdapter
  foreach ($n in @($P.nics)) {
    if ($n.switch) { Add-VMNetworkAdapter -VM $vm -Name $n.name -SwitchName $n.switch } else { Add-VMNetworkAdapter -VM $vm -Name $n.name }
  }
} catch {
  $why = $_.Exception.Message
  Remove-VM -VM $vm -Force
  Send @{ error = "creating $($P.name) failed and it was removed: $why"; code = 6 }
}
Send @{ name = $vm.Name; id = [string]$vm.Id }
