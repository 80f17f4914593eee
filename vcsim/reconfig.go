package main

import (
	"os"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ReconfigVM_Task hooks: change tracking on/off, disks added, removed or extended.

// requestedCapacity reads the capacity a client asks for in a disk edit. Clients
// often send back the device they fetched with only one of capacityInKB and
// capacityInBytes changed; the one that differs from the current size wins.
func requestedCapacity(vd *types.VirtualDisk, current int64) int64 {
	if vd.CapacityInBytes > 0 && vd.CapacityInBytes != current {
		return vd.CapacityInBytes
	}
	if vd.CapacityInKB > 0 && vd.CapacityInKB*1024 != current {
		return vd.CapacityInKB * 1024
	}
	return current
}

func (x *ext) preReconfigure(req *types.ReconfigVM_Task) (postHook, *rejection) {
	vm, st := x.vmOf(req.This)
	if st == nil {
		return nil, nil
	}
	var wasCBT bool
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil {
			wasCBT = isTrue(vm.Config.ChangeTrackingEnabled)
		}
	})

	grow := map[int32]int64{}
	destroy := map[int32]bool{}
	for i, ch := range req.Spec.DeviceChange {
		spec := ch.GetVirtualDeviceConfigSpec()
		vd, ok := spec.Device.(*types.VirtualDisk)
		if !ok {
			continue
		}
		d := st.disks[vd.Key]
		if d == nil {
			continue
		}
		switch spec.Operation {
		case types.VirtualDeviceConfigSpecOperationEdit:
			want := requestedCapacity(vd, d.capacity)
			if want < d.capacity {
				return nil, &rejection{&types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{
					Property: "virtualDeviceSpec.device.capacityInKB"}, DeviceIndex: int32(i)},
					"Invalid operation for device: a virtual disk cannot shrink"}
			}
			if want > d.capacity {
				if len(st.snaps) > 0 {
					return nil, &rejection{&types.NotSupported{},
						"A virtual disk that has snapshots cannot be extended"}
				}
				grow[vd.Key] = want
			}
		case types.VirtualDeviceConfigSpecOperationRemove:
			destroy[vd.Key] = spec.FileOperation == types.VirtualDeviceConfigSpecFileOperationDestroy
		}
	}

	return func(*simulator.Task) error {
		var nowCBT bool
		var specs []diskSpec
		simulator.Map.WithLock(vm, func() {
			if vm.Config != nil {
				nowCBT = isTrue(vm.Config.ChangeTrackingEnabled)
			}
			specs = vmDisks(vm)
		})

		switch {
		case wasCBT && !nowCBT:
			st.deactivateCBT()
		case !wasCBT && nowCBT && !st.cbtActive:
			st.cbtPending = true
		}

		present := map[int32]bool{}
		for _, s := range specs {
			present[s.key] = true
			d := st.disks[s.key]
			if d == nil {
				nd, err := x.newDisk(s)
				if err != nil {
					return err
				}
				if st.cbtActive {
					x.resetDisk(nd)
				}
				st.disks[s.key] = nd
				st.keys = append(st.keys, s.key)
				continue
			}
			if want, ok := grow[s.key]; ok {
				if err := x.extend(d, want); err != nil {
					return err
				}
			}
		}

		keys := st.keys[:0]
		for _, key := range st.keys {
			if present[key] {
				keys = append(keys, key)
				continue
			}
			if destroy[key] {
				for _, l := range st.disks[key].layers {
					if p, err := localPath(l.file); err == nil {
						_ = os.Remove(p)
						_ = os.Remove(flatName(p))
					}
				}
			}
			delete(st.disks, key)
		}
		st.keys = keys
		x.syncVM(vm, st)
		return nil
	}, nil
}
