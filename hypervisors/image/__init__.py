"""A raw disk image or block device as a backup source, with optional rbd-diff hints."""
