package main

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// QueryChangedDiskAreas, answered by the extension itself.
//
// Semantics (see notes/vsphere-cbt.md §1):
//   - snapshot set: the areas of the snapshot's disk changed since changeId;
//     snapshot unset: the VM's current disk, which needs a powered-off VM
//     (else InvalidPowerState).
//   - changeId "*": every allocated area (or the whole disk, as on NFS).
//   - an unknown, malformed or stale changeId, or CBT not in effect: FileFault.
//   - startOffset outside [0, capacity): InvalidArgument(startOffset);
//     no such disk: InvalidArgument(deviceKey).
//   - one answer covers [startOffset, startOffset+length) and holds at most
//     cfg.MaxExtents extents and cfg.MaxBytes bytes of the disk's address
//     space; clients loop with startOffset+length until capacity.

type extent struct {
	start, length int64
}

// cbtView is the tracking state a query runs against: a snapshot's frozen
// copy, or the running layer's.
type cbtView struct {
	file     string
	capacity int64
	alloc    []bool
	mod      []uint32
	epoch    string
	gen      uint32
}

type queryError struct {
	fault types.BaseMethodFault
	msg   string
}

func (e *queryError) Error() string { return e.msg }

func fileFault(file, why string) *queryError {
	return &queryError{
		fault: &types.FileFault{File: file},
		msg:   fmt.Sprintf("Error caused by file %s: %s", file, why),
	}
}

func invalidArgument(prop string) *queryError {
	return &queryError{
		fault: &types.InvalidArgument{InvalidProperty: prop},
		msg:   "A specified parameter was not correct: " + prop,
	}
}

// query computes one page of changed areas. x.mu must be held.
func (x *ext) query(vm *simulator.VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *queryError) {
	st, err := x.ensureVM(vm)
	if err != nil {
		return nil, &queryError{fault: &types.SystemError{Reason: err.Error()}, msg: err.Error()}
	}

	var power types.VirtualMachinePowerState
	simulator.Map.WithLock(vm, func() { power = vm.Runtime.PowerState })

	d := st.disks[req.DeviceKey]
	if d == nil {
		return nil, invalidArgument("deviceKey")
	}

	var v cbtView
	if req.Snapshot == nil {
		if power != types.VirtualMachinePowerStatePoweredOff {
			return nil, &queryError{
				fault: &types.InvalidPowerState{
					RequestedState: types.VirtualMachinePowerStatePoweredOff,
					ExistingState:  power,
				},
				msg: "The attempted operation cannot be performed in the current state (" + string(power) + ").",
			}
		}
		v = cbtView{file: d.live().file, capacity: d.capacity, alloc: d.alloc, mod: d.mod, epoch: d.epoch, gen: d.gen}
	} else {
		snap, ok := simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok {
			return nil, &queryError{
				fault: &types.ManagedObjectNotFound{Obj: *req.Snapshot},
				msg:   "The object '" + req.Snapshot.Value + "' has already been deleted or has not been completely created",
			}
		}
		if snap.Vm != vm.Self {
			return nil, invalidArgument("snapshot")
		}
		i := d.layerOf(*req.Snapshot)
		if i < 0 {
			// The disk did not exist when the snapshot was taken.
			return nil, invalidArgument("deviceKey")
		}
		l := d.layers[i]
		v = cbtView{file: l.file, capacity: l.fz.capacity, alloc: l.fz.alloc, mod: l.fz.mod, epoch: l.fz.epoch, gen: l.fz.gen}
	}

	if req.StartOffset < 0 || req.StartOffset >= v.capacity {
		return nil, invalidArgument("startOffset")
	}
	if !st.cbtActive || d.epoch == "" {
		return nil, fileFault(v.file, "change tracking is not in effect for this disk")
	}
	if v.epoch != d.epoch {
		return nil, fileFault(v.file, "change tracking was reset after this snapshot was taken")
	}

	var changed func(b int) bool
	if req.ChangeId == "*" {
		if x.cfg.StarWholeDisk {
			changed = func(int) bool { return true }
		} else {
			alloc := v.alloc
			changed = func(b int) bool { return alloc[b] }
		}
	} else {
		seq, ok := parseChangeID(req.ChangeId, v.epoch)
		if !ok || seq > v.gen {
			return nil, fileFault(v.file, fmt.Sprintf("changeId %q is not valid for this disk", req.ChangeId))
		}
		mod := v.mod
		changed = func(b int) bool { return mod[b] > seq }
	}

	length, areas := x.page(changed, v.capacity, req.StartOffset)
	info := &types.DiskChangeInfo{StartOffset: req.StartOffset, Length: length}
	for _, a := range areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.start, Length: a.length})
	}
	return info, nil
}

func parseChangeID(id, epoch string) (uint32, bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 || id[:i] != epoch {
		return 0, false
	}
	n, err := strconv.ParseUint(id[i+1:], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// page walks the blocks from start and returns the covered length and the
// merged extents, stopping at cfg.MaxExtents extents or cfg.MaxBytes bytes.
func (x *ext) page(changed func(int) bool, capacity, start int64) (int64, []extent) {
	return scanExtents(changed, x.blockSize, capacity, start, x.cfg.MaxExtents, x.cfg.MaxBytes)
}

// scanExtents merges the runs of changed blocks from start on (0 limits: none).
func scanExtents(changed func(int) bool, bs, capacity, start int64, maxExtents int, maxBytes int64) (int64, []extent) {
	end := capacity
	if maxBytes > 0 && start+maxBytes < end {
		end = start + maxBytes
	}
	var out []extent
	b := int(start / bs)
	for int64(b)*bs < end {
		if !changed(b) {
			b++
			continue
		}
		from := int64(b) * bs
		if from < start {
			from = start
		}
		for int64(b)*bs < end && changed(b) {
			b++
		}
		to := int64(b) * bs
		if to > end {
			to = end
		}
		out = append(out, extent{from, to - from})
		if maxExtents > 0 && len(out) >= maxExtents {
			return to - start, out
		}
	}
	return end - start, out
}

// serveQueryChangedDiskAreas answers the SOAP call. The caller has checked the session.
func (x *ext) serveQueryChangedDiskAreas(w http.ResponseWriter, req *types.QueryChangedDiskAreas) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		writeFault(w, &types.ManagedObjectNotFound{Obj: req.This},
			"The object '"+req.This.Value+"' has already been deleted or has not been completely created")
		return
	}
	x.mu.Lock()
	info, qerr := x.query(vm, req)
	x.mu.Unlock()
	if qerr != nil {
		writeFault(w, qerr.fault, qerr.msg)
		return
	}
	writeResult(w, "QueryChangedDiskAreas", "returnval", info)
}
