package main

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vmState is what the extension knows about one VM beyond the simulator's own
// object: its disks' layers and change tracking. Guarded by ext.mu.
type vmState struct {
	ref   types.ManagedObjectReference
	keys  []int32 // disk keys in device order
	disks map[int32]*disk
	// snaps is the linear snapshot chain, oldest first.
	snaps []types.ManagedObjectReference
	// cbtActive: change tracking is on and in effect. cbtPending: it was
	// enabled by ReconfigVM and takes effect at the next stun (power on,
	// snapshot create/remove/revert), as on ESXi.
	cbtActive  bool
	cbtPending bool
}

// disk is one virtual disk: a chain of layers plus the tracking arrays of its
// running layer, one entry per block of ext.blockSize bytes.
type disk struct {
	key      int32
	uuid     string
	capacity int64
	// layers, oldest first; the last one is the running layer that guest
	// writes go to, every other one was frozen by a snapshot.
	layers []*layer
	// alloc[b]: block b of the running layer has been written (or was found
	// non-zero when the file was scanned). This answers changeId "*".
	alloc []bool
	// mod[b] = 1 + the generation in which block b was last written; a block
	// changed since changeId "<epoch>/<n>" iff mod[b] > n. nil while CBT is off.
	mod []uint32
	// epoch names one continuous run of change tracking; "" while CBT is off.
	// A reset (disable, or the test API) starts a new one and so invalidates
	// every changeId handed out before.
	epoch string
	// gen counts the snapshots taken in this epoch.
	gen uint32
}

// layer is one file of a disk chain, named by its descriptor's datastore path
// ("[LocalDS_0] vm/disk1.vmdk"); its content lives in "<name>-flat.vmdk".
type layer struct {
	file string
	snap types.ManagedObjectReference // the snapshot that froze it; zero for the running layer
	fz   *frozen                      // what the tracking said at freeze time; nil for the running layer
	// pending: a running layer whose copy of the layer below is not made yet (its flat file is
	// an empty sparse placeholder). Nothing has written to it, so it holds what the layer below
	// holds; x.own makes the copy before anything reads or writes the file.
	pending bool
}

// frozen is a disk's tracking state captured when a snapshot froze a layer.
type frozen struct {
	changeID string // "" when CBT was not in effect
	epoch    string
	gen      uint32
	capacity int64
	alloc    []bool
	mod      []uint32
}

func (d *disk) live() *layer { return d.layers[len(d.layers)-1] }

func (d *disk) layerOf(snap types.ManagedObjectReference) int {
	for i, l := range d.layers {
		if l.snap == snap {
			return i
		}
	}
	return -1
}

// changeID renders a changeId the way ESXi does: "<16 hex pairs>/<sequence>".
// Clients must treat it as opaque.
func changeID(epoch string, gen uint32) string {
	return fmt.Sprintf("%s/%d", epoch, gen)
}

func newEpoch() string {
	u := uuid.New()
	var b strings.Builder
	for i, c := range u {
		switch {
		case i == 8:
			b.WriteByte('-')
		case i > 0:
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%02x", c)
	}
	return b.String()
}

func newDiskUUID() string {
	s := strings.ToUpper(uuid.New().String())
	return "6000C29" + s[7:]
}

func (x *ext) nblocks(capacity int64) int {
	return int((capacity + x.blockSize - 1) / x.blockSize)
}

// activateCBT starts change tracking on every disk of a VM (a new epoch each).
func (st *vmState) activateCBT(x *ext) {
	st.cbtActive = true
	st.cbtPending = false
	for _, d := range st.disks {
		x.resetDisk(d)
	}
}

func (st *vmState) deactivateCBT() {
	st.cbtActive = false
	st.cbtPending = false
	for _, d := range st.disks {
		d.epoch, d.gen, d.mod = "", 0, nil
	}
}

func (x *ext) resetDisk(d *disk) {
	d.epoch = newEpoch()
	d.gen = 0
	d.mod = make([]uint32, x.nblocks(d.capacity))
}

// stun is what ESXi does at power on and at snapshot create/remove/revert:
// pending change tracking takes effect.
func (st *vmState) stun(x *ext) {
	if st.cbtPending {
		st.activateCBT(x)
	}
}

// datastore paths -------------------------------------------------------------

func findDatastore(name string) *simulator.Datastore {
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == name {
			return ds
		}
	}
	return nil
}

// localPath maps "[ds] dir/file" to a file on this machine.
func localPath(dsPath string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return "", fmt.Errorf("not a datastore path: %q", dsPath)
	}
	ds := findDatastore(p.Datastore)
	if ds == nil {
		return "", fmt.Errorf("no datastore %q", p.Datastore)
	}
	root := ds.Info.GetDatastoreInfo().Url
	return filepath.Join(root, filepath.FromSlash(path.Clean("/"+p.Path))), nil
}

// flatName turns a descriptor name into its extent's name: disk1.vmdk -> disk1-flat.vmdk.
func flatName(name string) string {
	return strings.TrimSuffix(name, ".vmdk") + "-flat.vmdk"
}

func flatPath(dsPath string) (string, error) {
	p, err := localPath(dsPath)
	if err != nil {
		return "", err
	}
	return flatName(p), nil
}

// childName picks the running layer's name for a new snapshot: the base name
// with the lowest free "-00000N" suffix, as ESXi does.
func childName(d *disk) (string, error) {
	base := strings.TrimSuffix(d.layers[0].file, ".vmdk")
	used := map[string]bool{}
	for _, l := range d.layers {
		used[l.file] = true
	}
	for n := 1; n < 1000000; n++ {
		name := fmt.Sprintf("%s-%06d.vmdk", base, n)
		if used[name] {
			continue
		}
		p, err := flatPath(name)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(p); os.IsNotExist(err) {
			return name, nil
		}
	}
	return "", fmt.Errorf("no free child name for %s", d.layers[0].file)
}

// VM state ----------------------------------------------------------------------

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

func isTrue(b *bool) bool { return b != nil && *b }

type diskSpec struct {
	key      int32
	file     string
	uuid     string
	capacity int64
}

func vmDisks(vm *simulator.VirtualMachine) []diskSpec {
	var out []diskSpec
	if vm.Config == nil {
		return nil
	}
	for _, dev := range vm.Config.Hardware.Device {
		d, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		out = append(out, diskSpec{key: d.Key, file: b.FileName, uuid: b.Uuid, capacity: diskCapacity(d)})
	}
	return out
}

// ensureVM returns the state of a VM, creating it (and giving the VM's disks
// real sparse files of their capacity) the first time. x.mu must be held.
func (x *ext) ensureVM(vm *simulator.VirtualMachine) (*vmState, error) {
	if st := x.vms[vm.Self]; st != nil {
		return st, nil
	}
	st := &vmState{ref: vm.Self, disks: map[int32]*disk{}}
	var specs []diskSpec
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil {
			st.cbtPending = isTrue(vm.Config.ChangeTrackingEnabled)
		}
		specs = vmDisks(vm)
	})
	for _, s := range specs {
		d, err := x.newDisk(s)
		if err != nil {
			return nil, err
		}
		st.keys = append(st.keys, d.key)
		st.disks[d.key] = d
	}
	x.vms[vm.Self] = st
	x.syncVM(vm, st)
	return st, nil
}

// newDisk makes sure a disk's files exist with its capacity and scans which
// blocks hold data.
func (x *ext) newDisk(s diskSpec) (*disk, error) {
	d := &disk{key: s.key, uuid: s.uuid, capacity: s.capacity, layers: []*layer{{file: s.file}}}
	if d.uuid == "" {
		d.uuid = newDiskUUID()
	}
	fp, err := flatPath(s.file)
	if err != nil {
		return nil, err
	}
	if err := ensureSize(fp, s.capacity); err != nil {
		return nil, err
	}
	if err := x.writeDescriptorIfEmpty(s.file, d); err != nil {
		return nil, err
	}
	d.alloc, err = scanAllocated(fp, s.capacity, x.blockSize)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// prune forgets VMs that are no longer in the inventory.
func (x *ext) prune() {
	for ref := range x.vms {
		if _, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); !ok {
			delete(x.vms, ref)
		}
	}
}

// lookupVM finds a VM by moref value ("vm-42") or by name.
func lookupVM(id string) *simulator.VirtualMachine {
	if vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id}).(*simulator.VirtualMachine); ok {
		return vm
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		if vm.Name == id {
			return vm
		}
	}
	return nil
}

// syncing the simulator's objects -------------------------------------------------

// backingChain builds the parent chain of layers[0:n] (newest first).
func backingChain(template *types.VirtualDiskFlatVer2BackingInfo, d *disk, n int) *types.VirtualDiskFlatVer2BackingInfo {
	var parent *types.VirtualDiskFlatVer2BackingInfo
	for i := 0; i < n; i++ {
		b := &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
				FileName:  d.layers[i].file,
				Datastore: template.Datastore,
			},
			DiskMode:        template.DiskMode,
			ThinProvisioned: template.ThinProvisioned,
			Uuid:            d.uuid,
			Parent:          parent,
		}
		if i > 0 {
			b.DeltaDiskFormat = string(types.VirtualDiskDeltaDiskFormatRedoLogFormat)
		}
		parent = b
	}
	return parent
}

// applyLayer points one disk device at layer i of d, with the given changeId and capacity.
func applyLayer(dev *types.VirtualDisk, d *disk, i int, change string, capacity int64) {
	b, ok := dev.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return
	}
	b.FileName = d.layers[i].file
	b.Uuid = d.uuid
	b.ChangeId = change
	b.Parent = backingChain(b, d, i)
	b.DeltaDiskFormat = ""
	if i > 0 {
		b.DeltaDiskFormat = string(types.VirtualDiskDeltaDiskFormatRedoLogFormat)
	}
	dev.CapacityInBytes = capacity
	dev.CapacityInKB = capacity / 1024
}

// syncVM writes the layers, changeIds and capacities into the VM's devices and
// into each snapshot's (deep-copied) config, and refreshes the file layout.
func (x *ext) syncVM(vm *simulator.VirtualMachine, st *vmState) {
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		devices := vm.Config.Hardware.Device
		for _, dev := range devices {
			vd, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			d := st.disks[vd.Key]
			if d == nil {
				continue
			}
			change := ""
			if d.epoch != "" {
				change = changeID(d.epoch, d.gen)
			}
			applyLayer(vd, d, len(d.layers)-1, change, d.capacity)
		}
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: devices}})
		vm.RefreshStorageInfo(nil, &types.RefreshStorageInfo{This: vm.Self})
	})

	for _, ref := range st.snaps {
		snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
		if !ok {
			continue
		}
		simulator.Map.WithLock(snap, func() {
			for _, dev := range snap.Config.Hardware.Device {
				vd, ok := dev.(*types.VirtualDisk)
				if !ok {
					continue
				}
				d := st.disks[vd.Key]
				if d == nil {
					continue
				}
				i := d.layerOf(ref)
				if i < 0 {
					continue
				}
				applyLayer(vd, d, i, d.layers[i].fz.changeID, d.layers[i].fz.capacity)
			}
		})
	}
}
