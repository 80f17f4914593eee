package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/vim25/types"
)

// Disk content: every layer's "-flat.vmdk" is a complete, sparse raw image of
// the disk as it was when the layer was frozen (or is now, for the running
// layer). A snapshot freezes the running layer's file and starts a new child
// whose copy of it is made only when the child is first read or written (x.own),
// so the frozen file is never written again. ESXi starts an empty delta file; a
// backup reads the frozen layer and removes the snapshot without touching the
// child, so here too a snapshot costs O(1) unless the guest writes meanwhile.
// Removing a snapshot renames the child over the frozen file (O(1); the replaced
// image is freed in the background), or drops a child never copied; reverting
// copies the frozen image back.

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// ensureSize creates the file if needed and grows it (sparsely) to size bytes.
func ensureSize(p string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < size {
		return f.Truncate(size)
	}
	return nil
}

// scanAllocated reports, per block, whether the first capacity bytes of the
// file hold any non-zero byte. Holes are skipped with SEEK_DATA/SEEK_HOLE.
func scanAllocated(p string, capacity, bs int64) ([]bool, error) {
	n := int((capacity + bs - 1) / bs)
	alloc := make([]bool, n)
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, bs)
	zero := make([]byte, bs)
	next := 0 // first block not scanned yet
	off := int64(0)
	for off < capacity {
		data, err := f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break // nothing but holes from off on
			}
			data = off // no SEEK_DATA here: scan everything
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil || hole > capacity {
			hole = capacity
		}
		if data >= capacity {
			break
		}
		first := int(data / bs)
		if first < next {
			first = next
		}
		last := int((hole + bs - 1) / bs)
		for b := first; b < last && b < n; b++ {
			k, err := f.ReadAt(buf, int64(b)*bs)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			if !bytes.Equal(buf[:k], zero[:k]) {
				alloc[b] = true
			}
		}
		if last > next {
			next = last
		}
		if hole <= off {
			hole = off + bs
		}
		off = hole
	}
	return alloc, nil
}

// copyAllocated writes a new sparse file dst of capacity bytes holding src's
// allocated blocks (the rest reads as zeros).
func copyAllocated(src, dst string, alloc []bool, bs, capacity int64) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if err := out.Truncate(capacity); err != nil {
		return err
	}
	for b := 0; b < len(alloc); {
		if !alloc[b] {
			b++
			continue
		}
		start := b
		for b < len(alloc) && alloc[b] {
			b++
		}
		from := int64(start) * bs
		to := int64(b) * bs
		if to > capacity {
			to = capacity
		}
		if from >= to {
			continue
		}
		if _, err := in.Seek(from, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(from, io.SeekStart); err != nil {
			return err
		}
		// (*os.File).ReadFrom uses copy_file_range for this.
		if _, err := out.ReadFrom(io.LimitReader(in, to-from)); err != nil {
			return err
		}
	}
	return nil
}

// markWritten records a write of [off, off+n) into the running layer.
func (x *ext) markWritten(d *disk, off, n int64) {
	if n <= 0 {
		return
	}
	first := int(off / x.blockSize)
	last := int((off + n - 1) / x.blockSize)
	for b := first; b <= last && b < len(d.alloc); b++ {
		d.alloc[b] = true
		if d.mod != nil {
			d.mod[b] = d.gen + 1
		}
	}
}

// guestWrite writes data at off into the running layer, as the guest would.
func (x *ext) guestWrite(d *disk, off int64, data []byte) error {
	if off < 0 || off+int64(len(data)) > d.capacity {
		return fmt.Errorf("write of %d bytes at %d is outside the disk (capacity %d)", len(data), off, d.capacity)
	}
	if err := x.own(d); err != nil {
		return err
	}
	p, err := flatPath(d.live().file)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	x.markWritten(d, off, int64(len(data)))
	return nil
}

// guestRead reads from the running layer.
func (x *ext) guestRead(d *disk, off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off+n > d.capacity {
		return nil, fmt.Errorf("read of %d bytes at %d is outside the disk (capacity %d)", n, off, d.capacity)
	}
	if err := x.own(d); err != nil {
		return nil, err
	}
	p, err := flatPath(d.live().file)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	k, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for i := k; i < len(buf); i++ {
		buf[i] = 0
	}
	return buf, nil
}

// own makes the running layer's copy of the layer below if it is still pending:
// called before anything reads or writes the running layer's file.
func (x *ext) own(d *disk) error {
	live := d.live()
	if !live.pending {
		return nil
	}
	src, err := flatPath(d.layers[len(d.layers)-2].file)
	if err != nil {
		return err
	}
	dst, err := flatPath(live.file)
	if err != nil {
		return err
	}
	if err := copyAllocated(src, dst, d.alloc, x.blockSize, d.capacity); err != nil {
		return err
	}
	live.pending = false
	return nil
}

// freeze is a snapshot of one disk: the running layer becomes read-only and
// belongs to snap; a new child takes later writes, its copy made when first needed.
func (x *ext) freeze(d *disk, snap types.ManagedObjectReference) error {
	if err := x.own(d); err != nil { // only the running layer may be pending
		return err
	}
	live := d.live()
	child, err := childName(d)
	if err != nil {
		return err
	}
	dst, err := flatPath(child)
	if err != nil {
		return err
	}
	if err := ensureSize(dst, d.capacity); err != nil { // a placeholder: listings show the file
		return err
	}
	fz := &frozen{capacity: d.capacity, alloc: append([]bool(nil), d.alloc...)}
	if d.epoch != "" {
		d.gen++
		fz.epoch, fz.gen = d.epoch, d.gen
		fz.changeID = changeID(d.epoch, d.gen)
		fz.mod = append([]uint32(nil), d.mod...)
	}
	live.snap, live.fz = snap, fz
	d.layers = append(d.layers, &layer{file: child, pending: true})
	return x.writeDescriptor(child, d, d.capacity)
}

// consolidate removes snap's layer from a disk chain: the layer above it
// (the next snapshot's, or the running one) is renamed over it.
func (x *ext) consolidate(d *disk, snap types.ManagedObjectReference) error {
	i := d.layerOf(snap)
	if i < 0 || i+1 >= len(d.layers) {
		return nil
	}
	lower, upper := d.layers[i], d.layers[i+1]
	from, err := flatPath(upper.file)
	if err != nil {
		return err
	}
	to, err := flatPath(lower.file)
	if err != nil {
		return err
	}
	if upper.pending {
		// Never copied: it holds what the frozen file holds, which keeps its name.
		if err := os.Remove(from); err != nil && !os.IsNotExist(err) {
			return err
		}
	} else {
		// The rename drops the frozen image's last name. Freeing its blocks (an unlink of a
		// whole disk's data, up to a second here) is the simulator's artefact: ESXi merges a
		// small delta instead. An open handle keeps the inode alive past the rename, and
		// closing it in the background frees the blocks off the RemoveSnapshot call.
		old, oerr := os.Open(to)
		if err := os.Rename(from, to); err != nil {
			if oerr == nil {
				_ = old.Close()
			}
			return err
		}
		if oerr == nil {
			go func() { _ = old.Close() }()
		}
	}
	if desc, err := localPath(upper.file); err == nil {
		_ = os.Remove(desc)
	}
	lower.snap, lower.fz, lower.pending = upper.snap, upper.fz, false
	d.layers = append(d.layers[:i+1], d.layers[i+2:]...)
	capacity := d.capacity
	if lower.fz != nil {
		capacity = lower.fz.capacity
	}
	return x.writeDescriptor(lower.file, d, capacity)
}

// revert copies the newest snapshot's frozen image back into the running layer.
func (x *ext) revert(d *disk) error {
	n := len(d.layers)
	if n < 2 {
		return nil
	}
	base, live := d.layers[n-2], d.layers[n-1]
	fz := base.fz
	src, err := flatPath(base.file)
	if err != nil {
		return err
	}
	dst, err := flatPath(live.file)
	if err != nil {
		return err
	}
	if !live.pending { // a pending layer holds the frozen image already
		tmp := dst + ".revert"
		if err := copyAllocated(src, tmp, fz.alloc, x.blockSize, fz.capacity); err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	if d.mod != nil {
		// Every block written since the snapshot changes (back) again now.
		nb := x.nblocks(fz.capacity)
		mod := make([]uint32, nb)
		copy(mod, d.mod)
		for b := range mod {
			changed := fz.epoch != d.epoch || fz.mod == nil || b >= len(d.mod) || d.mod[b] > fz.gen
			if changed && (b < len(d.alloc) && d.alloc[b] || b < len(fz.alloc) && fz.alloc[b]) {
				mod[b] = d.gen + 1
			}
		}
		d.mod = mod
	}
	d.alloc = append([]bool(nil), fz.alloc...)
	d.capacity = fz.capacity
	return x.writeDescriptor(live.file, d, d.capacity)
}

// extend grows a disk (its running layer and its tracking) to capacity bytes.
// The new area counts as changed: a false positive, never a miss.
func (x *ext) extend(d *disk, capacity int64) error {
	if capacity <= d.capacity {
		return nil
	}
	if err := x.own(d); err != nil {
		return err
	}
	p, err := flatPath(d.live().file)
	if err != nil {
		return err
	}
	if err := ensureSize(p, capacity); err != nil {
		return err
	}
	first := int(d.capacity / x.blockSize)
	nb := x.nblocks(capacity)
	alloc := make([]bool, nb)
	copy(alloc, d.alloc)
	d.alloc = alloc
	if d.mod != nil {
		mod := make([]uint32, nb)
		copy(mod, d.mod)
		for b := first; b < nb; b++ {
			mod[b] = d.gen + 1
		}
		d.mod = mod
	}
	d.capacity = capacity
	return x.writeDescriptor(d.live().file, d, capacity)
}

// replaceContent installs an uploaded image (a /folder PUT) as the running
// layer. Blocks that held data before or hold data now count as changed.
func (x *ext) replaceContent(d *disk, uploaded string) error {
	if err := ensureSize(uploaded, d.capacity); err != nil {
		return err
	}
	alloc, err := scanAllocated(uploaded, d.capacity, x.blockSize)
	if err != nil {
		return err
	}
	dst, err := flatPath(d.live().file)
	if err != nil {
		return err
	}
	if err := os.Rename(uploaded, dst); err != nil {
		return err
	}
	d.live().pending = false // the upload is its content
	for b := range alloc {
		if d.mod != nil && (alloc[b] || d.alloc[b]) {
			d.mod[b] = d.gen + 1
		}
	}
	d.alloc = alloc
	return nil
}

// descriptors -----------------------------------------------------------------

// writeDescriptor writes a monolithic-flat VMDK descriptor, so that the VM's
// directory can also be opened by tools such as qemu-img.
func (x *ext) writeDescriptor(file string, d *disk, capacity int64) error {
	p, err := localPath(file)
	if err != nil {
		return err
	}
	sectors := (capacity + 511) / 512
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\n")
	b.WriteString("createType=\"vmfs\"\n\n# Extent description\n")
	fmt.Fprintf(&b, "RW %d VMFS \"%s\"\n\n", sectors, filepath.Base(flatName(p)))
	b.WriteString("# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n")
	fmt.Fprintf(&b, "ddb.uuid = \"%s\"\nddb.virtualHWVersion = \"13\"\n", descriptorUUID(d.uuid))
	return os.WriteFile(p, []byte(b.String()), 0o600)
}

func (x *ext) writeDescriptorIfEmpty(file string, d *disk) error {
	p, err := localPath(file)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
		return nil
	}
	return x.writeDescriptor(file, d, d.capacity)
}

// descriptorUUID renders "6000C29x-..." as the descriptor's "60 00 c2 9x ..." form.
func descriptorUUID(u string) string {
	h := strings.ToLower(strings.ReplaceAll(u, "-", ""))
	var parts []string
	for i := 0; i+1 < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	if len(parts) != 16 {
		return h
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}
