package main

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// SOAP interception. Every /sdk POST is read; the method name is sniffed to
// apply injected faults and to pick the methods the extension hooks. Hooked
// calls are decoded with simulator.UnmarshalBody, run through the simulator
// with a recorder under x.mu, and followed by a post-hook before the answer is
// released (0.24.2 runs tasks synchronously, so the task is complete by then).

// hooked lists the methods that need the extension's pre- or post-hooks.
var hooked = map[string]bool{
	"QueryChangedDiskAreas":        true,
	"CreateSnapshot_Task":          true,
	"RemoveSnapshot_Task":          true,
	"RemoveAllSnapshots_Task":      true,
	"RevertToSnapshot_Task":        true,
	"RevertToCurrentSnapshot_Task": true,
	"ReconfigVM_Task":              true,
	"PowerOnVM_Task":               true,
	"CreateVM_Task":                true,
	"CloneVM_Task":                 true,
	"Destroy_Task":                 true,
	"UnregisterVM":                 true,
}

func httpBody(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

func (x *ext) serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	name := sniffMethod(body)

	if f := x.faults.take(faultDelay, name, r); f != nil {
		time.Sleep(time.Duration(f.Seconds * float64(time.Second)))
	}
	if f := x.faults.take(faultStatus, name, r); f != nil {
		http.Error(w, "injected by vmkeep-test", f.Status)
		return
	}
	if f := x.faults.take(faultSOAP, name, r); f != nil {
		fault, msg := f.methodFault()
		writeFault(w, fault, msg)
		return
	}
	if x.faults.pending(faultTask, name) {
		if m, err := simulator.UnmarshalBody(x.typeFunc, body); err == nil && x.sessionValid(r) {
			if obj := simulator.Map.Get(m.This); obj != nil {
				if f := x.faults.take(faultTask, name, r); f != nil {
					fault, msg := f.methodFault()
					writeTaskResult(w, name, failedTask(obj, name, fault, msg))
					return
				}
			}
		}
	}

	if !hooked[name] {
		x.callInner(w, r, body, name)
		return
	}

	m, err := simulator.UnmarshalBody(x.typeFunc, body)
	if err != nil {
		x.callInner(w, r, body, name) // let the simulator answer the decoding error
		return
	}

	if req, ok := m.Body.(*types.QueryChangedDiskAreas); ok {
		if !x.sessionValid(r) {
			writeFault(w, &types.NotAuthenticated{NoPermission: types.NoPermission{
				Object: req.This, PrivilegeId: "VirtualMachine.Provisioning.DiskRandomRead",
			}}, "")
			return
		}
		x.serveQueryChangedDiskAreas(w, req)
		return
	}

	x.mu.Lock()
	defer x.mu.Unlock()

	if req, ok := m.Body.(*types.CloneVM_Task); ok {
		x.serveClone(w, r, body, req)
		return
	}

	post, reject := x.preHook(name, m)
	if reject != nil {
		obj := simulator.Map.Get(m.This)
		if obj != nil && x.sessionValid(r) {
			writeTaskResult(w, name, failedTask(obj, name, reject.fault, reject.msg))
			return
		}
	}

	rec := x.forward(r, body)
	if post != nil {
		if ref, ok := taskOf(rec); ok {
			if task, ok := simulator.Map.Get(ref).(*simulator.Task); ok && task.Info.State == types.TaskInfoStateSuccess {
				if err := post(task); err != nil {
					log.Printf("%s post-hook: %v", name, err)
					failTask(task, &types.SystemError{Reason: err.Error()}, err.Error())
				}
			}
		} else if rec.Code == http.StatusOK && name == "UnregisterVM" {
			if err := post(nil); err != nil {
				log.Printf("%s post-hook: %v", name, err)
			}
		}
	}
	copyRecorded(w, rec)
}

// callInner passes a SOAP call to the simulator. The simulator builds its whole
// answer before writing it, so a panic inside it can still be answered: as an
// empty FetchResponse for Fetch (0.24.2 panics when pyVmomi fetches an unset
// property, e.g. vm.snapshot once the last snapshot is gone; a real server
// answers "unset"), else as a SystemError fault instead of a dropped connection.
func (x *ext) callInner(w http.ResponseWriter, r *http.Request, body []byte, name string) {
	r.Body = httpBody(body)
	r.ContentLength = int64(len(body))
	tw := &trackingWriter{ResponseWriter: w}
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if p == http.ErrAbortHandler || tw.wrote {
			panic(p)
		}
		if name == "Fetch" {
			writeEnvelope(w, http.StatusOK, []byte(`<FetchResponse xmlns="urn:vim25"></FetchResponse>`))
			return
		}
		log.Printf("simulator panic in %s: %v\n%s", name, p, debug.Stack())
		msg := fmt.Sprintf("simulator panic in %s: %v", name, p)
		writeFault(w, &types.SystemError{Reason: msg}, msg)
	}()
	x.inner.ServeHTTP(tw, r)
}

// trackingWriter notes whether anything was written.
type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackingWriter) WriteHeader(code int) {
	t.wrote = true
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(p)
}

// failedTask creates a task on obj that has already failed with fault.
func failedTask(obj interface {
	Reference() types.ManagedObjectReference
}, method string, fault types.BaseMethodFault, msg string) types.ManagedObjectReference {
	id := strings.TrimSuffix(method, "_Task")
	id = strings.ToLower(id[:1]) + id[1:]
	task := simulator.CreateTask(obj, id, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}},
	})
	return ref
}

// failTask turns a finished task into a failed one (a post-hook could not do its part).
func failTask(task *simulator.Task, fault types.BaseMethodFault, msg string) {
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.state", Val: types.TaskInfoStateError},
		{Name: "info.result", Val: nil},
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}},
	})
}

type postHook func(task *simulator.Task) error

type rejection struct {
	fault types.BaseMethodFault
	msg   string
}

// preHook validates a hooked call and returns what to do once the simulator
// has run it. x.mu is held.
func (x *ext) preHook(name string, m *simulator.Method) (postHook, *rejection) {
	switch req := m.Body.(type) {
	case *types.CreateSnapshot_Task:
		vm, st := x.vmOf(req.This)
		if st == nil {
			return nil, nil
		}
		return func(t *simulator.Task) error {
			ref, ok := t.Info.Result.(types.ManagedObjectReference)
			if !ok {
				return fmt.Errorf("no snapshot in the task result")
			}
			return x.afterSnapshot(vm, st, ref)
		}, nil

	case *types.RemoveSnapshot_Task:
		vm, st, idx := x.snapshotOf(req.This)
		if st == nil || idx < 0 {
			return nil, nil
		}
		remove := []types.ManagedObjectReference{req.This}
		if req.RemoveChildren {
			remove = append([]types.ManagedObjectReference(nil), st.snaps[idx:]...)
		}
		return func(*simulator.Task) error { return x.removeSnapshots(vm, st, remove) }, nil

	case *types.RemoveAllSnapshots_Task:
		vm, st := x.vmOf(req.This)
		if st == nil {
			return nil, nil
		}
		return func(*simulator.Task) error {
			return x.removeSnapshots(vm, st, append([]types.ManagedObjectReference(nil), st.snaps...))
		}, nil

	case *types.RevertToSnapshot_Task:
		vm, st, idx := x.snapshotOf(req.This)
		if st == nil || idx < 0 {
			return nil, nil
		}
		if idx != len(st.snaps)-1 {
			return nil, &rejection{&types.NotSupported{},
				"vmkeep-vcsim models linear snapshot chains: only the newest snapshot can be reverted to"}
		}
		return func(*simulator.Task) error { return x.afterRevert(vm, st) }, nil

	case *types.RevertToCurrentSnapshot_Task:
		vm, st := x.vmOf(req.This)
		if st == nil || len(st.snaps) == 0 {
			return nil, nil
		}
		return func(*simulator.Task) error { return x.afterRevert(vm, st) }, nil

	case *types.ReconfigVM_Task:
		return x.preReconfigure(req)

	case *types.PowerOnVM_Task:
		vm, st := x.vmOf(req.This)
		if st == nil {
			return nil, nil
		}
		return func(*simulator.Task) error {
			st.stun(x)
			x.syncVM(vm, st)
			return nil
		}, nil

	case *types.CreateVM_Task:
		return func(t *simulator.Task) error {
			ref, ok := t.Info.Result.(types.ManagedObjectReference)
			if !ok {
				return nil
			}
			vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
			if !ok {
				return nil
			}
			_, err := x.ensureVM(vm)
			return err
		}, nil

	case *types.Destroy_Task, *types.UnregisterVM:
		return func(*simulator.Task) error {
			x.prune()
			return nil
		}, nil
	}
	return nil, nil
}

func (x *ext) vmOf(ref types.ManagedObjectReference) (*simulator.VirtualMachine, *vmState) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return nil, nil
	}
	st, err := x.ensureVM(vm)
	if err != nil {
		log.Printf("%s: %v", ref.Value, err)
		return nil, nil
	}
	return vm, st
}

// snapshotOf finds a snapshot's VM, its state and the snapshot's place in the chain.
func (x *ext) snapshotOf(ref types.ManagedObjectReference) (*simulator.VirtualMachine, *vmState, int) {
	snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return nil, nil, -1
	}
	vm, st := x.vmOf(snap.Vm)
	if st == nil {
		return nil, nil, -1
	}
	for i, s := range st.snaps {
		if s == ref {
			return vm, st, i
		}
	}
	return vm, st, -1
}

// afterSnapshot: the stun activates pending CBT, the snapshot gets a deep copy
// of the VM's config, each disk's running layer is frozen, and the VM moves to
// new child layers.
func (x *ext) afterSnapshot(vm *simulator.VirtualMachine, st *vmState, ref types.ManagedObjectReference) error {
	snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return fmt.Errorf("snapshot %s not found", ref.Value)
	}
	st.stun(x)
	var cfg types.VirtualMachineConfigInfo
	simulator.Map.WithLock(vm, func() { cfg = *deepCopy(vm.Config) })
	simulator.Map.WithLock(snap, func() { snap.Config = cfg })
	for _, key := range st.keys {
		if err := x.freeze(st.disks[key], ref); err != nil {
			return err
		}
	}
	st.snaps = append(st.snaps, ref)
	x.syncVM(vm, st)
	x.noteSnapshots()
	return nil
}

// removeSnapshots consolidates each removed snapshot's layer, newest first.
func (x *ext) removeSnapshots(vm *simulator.VirtualMachine, st *vmState, remove []types.ManagedObjectReference) error {
	st.stun(x)
	for i := len(remove) - 1; i >= 0; i-- {
		ref := remove[i]
		for _, key := range st.keys {
			if err := x.consolidate(st.disks[key], ref); err != nil {
				return err
			}
		}
		for j, s := range st.snaps {
			if s == ref {
				st.snaps = append(st.snaps[:j], st.snaps[j+1:]...)
				break
			}
		}
	}
	x.syncVM(vm, st)
	x.noteSnapshots()
	return nil
}

func (x *ext) afterRevert(vm *simulator.VirtualMachine, st *vmState) error {
	st.stun(x)
	for _, key := range st.keys {
		if err := x.revert(st.disks[key]); err != nil {
			return err
		}
	}
	x.syncVM(vm, st)
	return nil
}
