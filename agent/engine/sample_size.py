"""How much the sanity check (sanity.py) samples by default.

A module of its own so that parsing a backup command's options, whose help names these, loads
no part of the engine: the passphrase's key derivation starts once the options are parsed, and
everything loaded after that overlaps with it (cli.main).
"""

WINDOW = 64 * 1024  # bytes compared per sampled block (the whole block if blocks are smaller)
DEFAULT_WINDOWS = 16  # per disk: 1 MiB of source reads whatever the disk's size
