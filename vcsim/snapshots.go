package main

// Snapshots per host, as a backup fleet sees them: how many snapshots exist at
// once on each host, now and at most since the start (or the last reset). A
// fleet of backup proxies must keep a host's concurrent snapshots under its
// limit; tests read the record through GET /vmkeep-test/snapshots.

import (
	"net/http"
	"sort"

	"github.com/vmware/govmomi/simulator"
)

// hostSnapshots is the record of one host.
type hostSnapshots struct {
	Current int `json:"current"`
	Max     int `json:"max"`
}

// noteSnapshots recounts the snapshots of every host and raises the maxima.
// x.mu is held (it runs in the post-hooks of snapshot create and remove).
func (x *ext) noteSnapshots() {
	if x.snapRecord == nil {
		x.snapRecord = map[string]*hostSnapshots{}
	}
	counts := map[string]int{}
	for ref, st := range x.vms {
		vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		host := ""
		simulator.Map.WithLock(vm, func() {
			if vm.Runtime.Host != nil {
				host = vm.Runtime.Host.Value
			}
		})
		counts[host] += len(st.snaps)
	}
	for host, rec := range x.snapRecord {
		rec.Current = counts[host]
	}
	for host, n := range counts {
		rec := x.snapRecord[host]
		if rec == nil {
			rec = &hostSnapshots{}
			x.snapRecord[host] = rec
		}
		rec.Current = n
		if n > rec.Max {
			rec.Max = n
		}
	}
}

// apiSnapshots: GET the record per host; DELETE resets each maximum to the current count.
func (x *ext) apiSnapshots(w http.ResponseWriter, r *http.Request) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.noteSnapshots()
	if r.Method == http.MethodDelete {
		for _, rec := range x.snapRecord {
			rec.Max = rec.Current
		}
	}
	hosts := make([]string, 0, len(x.snapRecord))
	for h := range x.snapRecord {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	out := map[string]hostSnapshots{}
	for _, h := range hosts {
		out[h] = *x.snapRecord[h]
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"hosts": out})
	return nil
}
