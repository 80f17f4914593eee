package main

import (
	"log"
	"net/http"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// CloneVM_Task. Stock 0.24.2 hands the source VM's own device objects to the
// clone and blanks their backing file names on the way, so the source would end
// up pointing at the clone's disks. The source's devices are deep-copied before
// the call and put back after it (the clone keeps the originals), and the clone's
// new disks get a copy of the source's current content, as a real clone does.
// x.mu is held.
func (x *ext) serveClone(w http.ResponseWriter, r *http.Request, body []byte, req *types.CloneVM_Task) {
	vm, st := x.vmOf(req.This)
	if st == nil {
		copyRecorded(w, x.forward(r, body))
		return
	}
	var saved []types.BaseVirtualDevice
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil {
			saved = *deepCopy(&vm.Config.Hardware.Device)
		}
	})

	rec := x.forward(r, body)

	if saved != nil {
		simulator.Map.WithLock(vm, func() {
			if vm.Config != nil {
				vm.Config.Hardware.Device = saved
			}
		})
		x.syncVM(vm, st)
	}
	if ref, ok := taskOf(rec); ok {
		if task, ok := simulator.Map.Get(ref).(*simulator.Task); ok && task.Info.State == types.TaskInfoStateSuccess {
			if err := x.afterClone(st, task); err != nil {
				log.Printf("CloneVM_Task post-hook: %v", err)
				failTask(task, &types.SystemError{Reason: err.Error()}, err.Error())
			}
		}
	}
	copyRecorded(w, rec)
}

func (x *ext) afterClone(src *vmState, task *simulator.Task) error {
	ref, ok := task.Info.Result.(types.ManagedObjectReference)
	if !ok {
		return nil
	}
	clone, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return nil
	}
	st, err := x.ensureVM(clone)
	if err != nil {
		return err
	}
	for _, key := range st.keys {
		from, to := src.disks[key], st.disks[key]
		if from == nil || from.capacity != to.capacity {
			continue
		}
		if err := x.own(from); err != nil {
			return err
		}
		srcPath, err := flatPath(from.live().file)
		if err != nil {
			return err
		}
		dstPath, err := flatPath(to.live().file)
		if err != nil {
			return err
		}
		if err := copyAllocated(srcPath, dstPath, from.alloc, x.blockSize, from.capacity); err != nil {
			return err
		}
		to.alloc = append([]bool(nil), from.alloc...)
		if to.mod != nil {
			for b := range to.alloc {
				if to.alloc[b] {
					to.mod[b] = to.gen + 1
				}
			}
		}
	}
	x.syncVM(clone, st)
	return nil
}
