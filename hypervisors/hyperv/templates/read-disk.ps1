# vmkeep-template: read-disk/1
# A byte range of a frozen VHDX, base64: the fallback when SMB cannot reach the host. The VHDX is
# attached read-only without a drive letter and its physical disk read.
$ErrorActionPreference = 'Stop'
$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))
function Send($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Depth 8 -Compress)); exit 0 }
trap { Send @{ error = $_.Exception.Message; code = [int64]$_.Exception.HResult } }
$img = Mount-DiskImage -ImagePath $P.path -Access ReadOnly -NoDriveLetter -PassThru
try {
  $n = ($img | Get-DiskImage | Get-Disk).Number
  $f = [IO.File]::Open("\\.\PhysicalDrive$n", 'Open', 'Read', 'ReadWrite')
  try {
    $buf = New-Object byte[] ([int]$P.length)
    [void]$f.Seek([int64]$P.offset, 'Begin')
    $got = 0
    while ($got -lt $buf.Length) { $k = $f.Read($buf, $got, $buf.Length - $got); if ($k -le 0) { break }; $got += $k }
  } finally { $f.Dispose() }
} finally { Dismount-DiskImage -ImagePath $P.path | Out-Null }
Send @{ length = $got; data = [Convert]::ToBase64String($buf, 0, $got) }
