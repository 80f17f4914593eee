package main

import (
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Fixes for govmomi 0.24.2 simulator defects that break pyVmomi or backup logic:
//
//   - RemoveSnapshot_Task and RevertToSnapshot_Task put the snapshot in
//     task.info.entity; pyVmomi then fails with "For "entity" expected type
//     vim.ManagedEntity, but got vim.vm.Snapshot". A real vCenter names the VM.
//   - capability.changeTrackingSupported is unset (reads as false).
//   - CreateSnapshot_Task shares the VM's device objects with the snapshot's
//     config (fixed in afterSnapshot with deepCopy).
//
// The first two are fixed by a Registry handler that sees every object as it
// is put in the inventory.

type fixer struct{}

var fixerRef = types.ManagedObjectReference{Type: "VmkeepFixes", Value: "vmkeep-fixes"}

func (fixer) Reference() types.ManagedObjectReference { return fixerRef }

func (fixer) PutObject(o mo.Reference) {
	switch obj := o.(type) {
	case *simulator.Task:
		fixTaskEntity(obj)
	case *simulator.VirtualMachine:
		obj.Capability.ChangeTrackingSupported = types.NewBool(true)
	}
}

func (fixer) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (fixer) RemoveObject(types.ManagedObjectReference) {}

func fixTaskEntity(t *simulator.Task) {
	e := t.Info.Entity
	if e == nil {
		return
	}
	ref := *e
	if ref.Type == "VirtualMachineSnapshot" {
		snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
		if !ok {
			return
		}
		ref = snap.Vm
		t.Info.Entity = &ref
	}
	if ent, ok := simulator.Map.Get(ref).(mo.Entity); ok {
		t.Info.EntityName = ent.Entity().Name
	}
}

func installFixes() {
	simulator.Map.AddHandler(fixer{})
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			vm.Capability.ChangeTrackingSupported = types.NewBool(true)
		})
	}
}

// deepCopy returns a copy of *p that shares no pointers, slices, maps or
// interface values with it (unexported fields, e.g. inside time.Time, are copied
// by value).
func deepCopy[T any](p *T) *T {
	out := new(T)
	if p != nil {
		copyValue(reflect.ValueOf(out).Elem(), reflect.ValueOf(p).Elem())
	}
	return out
}

func copyValue(dst, src reflect.Value) {
	switch src.Kind() {
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		n := reflect.New(src.Elem().Type())
		copyValue(n.Elem(), src.Elem())
		dst.Set(n)
	case reflect.Interface:
		if src.IsNil() {
			return
		}
		n := reflect.New(src.Elem().Type()).Elem()
		copyValue(n, src.Elem())
		dst.Set(n)
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		n := reflect.MakeSlice(src.Type(), src.Len(), src.Len())
		for i := 0; i < src.Len(); i++ {
			copyValue(n.Index(i), src.Index(i))
		}
		dst.Set(n)
	case reflect.Map:
		if src.IsNil() {
			return
		}
		n := reflect.MakeMapWithSize(src.Type(), src.Len())
		it := src.MapRange()
		for it.Next() {
			v := reflect.New(src.Type().Elem()).Elem()
			copyValue(v, it.Value())
			n.SetMapIndex(it.Key(), v)
		}
		dst.Set(n)
	case reflect.Struct:
		dst.Set(src)
		for i := 0; i < src.NumField(); i++ {
			if dst.Field(i).CanSet() {
				copyValue(dst.Field(i), src.Field(i))
			}
		}
	default:
		dst.Set(src)
	}
}
