package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
)

// The test-only API, under /vmkeep-test/ and apart from /sdk and /folder. It
// provokes what a test cannot get through the vSphere API: guest writes, a CBT
// reset, faults, paging limits. JSON in and out; errors are {"error": "..."}.
//
//	GET    /vmkeep-test/                      this list
//	POST   /vmkeep-test/write?vm=&key=&offset=  body: raw bytes, written by the "guest"
//	GET    /vmkeep-test/read?vm=&key=&offset=&length=  the running layer's bytes
//	GET    /vmkeep-test/state[?vm=]            disks, layers, changeIds, snapshots
//	POST   /vmkeep-test/cbt-reset?vm=[&key=]   new CBT epoch: old changeIds give FileFault
//	GET    /vmkeep-test/config                 QueryChangedDiskAreas knobs
//	POST   /vmkeep-test/config                 {"max_extents":N,"max_bytes":N,"star_whole_disk":B} (any subset)
//	GET    /vmkeep-test/fault                  armed faults with hit counts
//	POST   /vmkeep-test/fault                  arm one (see faults.go)
//	DELETE /vmkeep-test/fault                  disarm all
//
// vm= takes a moref value ("vm-42") or a VM name; key= may be left out for a
// VM with one disk.

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, a ...interface{}) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

func notFound(format string, a ...interface{}) error {
	return &apiError{http.StatusNotFound, fmt.Sprintf(format, a...)}
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeAPIError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var ae *apiError
	if errors.As(err, &ae) {
		status = ae.status
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

var testEndpoints = []string{
	"GET /vmkeep-test/",
	"POST /vmkeep-test/write?vm=&key=&offset= (body: bytes)",
	"GET /vmkeep-test/read?vm=&key=&offset=&length=",
	"GET /vmkeep-test/state[?vm=]",
	"POST /vmkeep-test/cbt-reset?vm=[&key=]",
	"GET|POST /vmkeep-test/config",
	"GET|POST|DELETE /vmkeep-test/fault",
	"GET|DELETE /vmkeep-test/snapshots",
	"GET /vmkeep-test/traffic",
}

func (x *ext) serveTestAPI(w http.ResponseWriter, r *http.Request) {
	route := strings.Trim(strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(testPrefix, "/")), "/")
	var err error
	switch route + " " + r.Method {
	case " GET":
		writeJSON(w, http.StatusOK, map[string][]string{"endpoints": testEndpoints})
	case "write POST":
		err = x.apiWrite(w, r)
	case "read GET":
		err = x.apiRead(w, r)
	case "state GET":
		err = x.apiState(w, r)
	case "cbt-reset POST":
		err = x.apiReset(w, r)
	case "config GET", "config POST":
		err = x.apiConfig(w, r)
	case "fault GET", "fault POST", "fault DELETE":
		err = x.apiFault(w, r)
	case "snapshots GET", "snapshots DELETE":
		err = x.apiSnapshots(w, r)
	case "traffic GET":
		err = x.apiTraffic(w, r)
	default:
		err = notFound("no test endpoint %s %s", r.Method, r.URL.Path)
	}
	if err != nil {
		writeAPIError(w, err)
	}
}

func queryInt(r *http.Request, name string, required bool) (int64, bool, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		if required {
			return 0, false, badRequest("%s= is required", name)
		}
		return 0, false, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false, badRequest("%s=%q is not an integer", name, s)
	}
	return n, true, nil
}

// diskOf resolves vm= and key=. x.mu must be held.
func (x *ext) diskOf(r *http.Request) (*simulator.VirtualMachine, *vmState, *disk, error) {
	id := r.URL.Query().Get("vm")
	if id == "" {
		return nil, nil, nil, badRequest("vm= is required")
	}
	vm := lookupVM(id)
	if vm == nil {
		return nil, nil, nil, notFound("no VM %q", id)
	}
	st, err := x.ensureVM(vm)
	if err != nil {
		return nil, nil, nil, err
	}
	key, ok, err := queryInt(r, "key", false)
	if err != nil {
		return nil, nil, nil, err
	}
	if !ok {
		if len(st.keys) != 1 {
			return nil, nil, nil, badRequest("VM %s has %d disks: key= is required", id, len(st.keys))
		}
		return vm, st, st.disks[st.keys[0]], nil
	}
	d := st.disks[int32(key)]
	if d == nil {
		return nil, nil, nil, notFound("VM %s has no disk with key %d", id, key)
	}
	return vm, st, d, nil
}

func (x *ext) apiWrite(w http.ResponseWriter, r *http.Request) error {
	off, _, err := queryInt(r, "offset", true)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return badRequest("reading the body: %v", err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	_, _, d, err := x.diskOf(r)
	if err != nil {
		return err
	}
	if err := x.guestWrite(d, off, data); err != nil {
		return badRequest("%v", err)
	}
	first := off / x.blockSize
	last := first
	if len(data) > 0 {
		last = (off + int64(len(data)) - 1) / x.blockSize
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"written": len(data), "file": d.live().file, "first_block": first, "last_block": last,
	})
	return nil
}

func (x *ext) apiRead(w http.ResponseWriter, r *http.Request) error {
	off, _, err := queryInt(r, "offset", true)
	if err != nil {
		return err
	}
	n, _, err := queryInt(r, "length", true)
	if err != nil {
		return err
	}
	x.mu.Lock()
	_, _, d, err := x.diskOf(r)
	var data []byte
	if err == nil {
		data, err = x.guestRead(d, off, n)
		if err != nil {
			err = badRequest("%v", err)
		}
	}
	x.mu.Unlock()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	_, _ = w.Write(data)
	return nil
}

func (x *ext) apiReset(w http.ResponseWriter, r *http.Request) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	id := r.URL.Query().Get("vm")
	vm := lookupVM(id)
	if vm == nil {
		return notFound("no VM %q", id)
	}
	st, err := x.ensureVM(vm)
	if err != nil {
		return err
	}
	key, one, err := queryInt(r, "key", false)
	if err != nil {
		return err
	}
	if !st.cbtActive {
		return &apiError{http.StatusConflict, "change tracking is not in effect on " + id}
	}
	reset := map[string]string{}
	for _, k := range st.keys {
		if one && int64(k) != key {
			continue
		}
		d := st.disks[k]
		x.resetDisk(d)
		reset[strconv.Itoa(int(k))] = changeID(d.epoch, d.gen)
	}
	if one && len(reset) == 0 {
		return notFound("VM %s has no disk with key %d", id, key)
	}
	x.syncVM(vm, st)
	writeJSON(w, http.StatusOK, map[string]interface{}{"change_ids": reset})
	return nil
}

func (x *ext) apiConfig(w http.ResponseWriter, r *http.Request) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if r.Method == http.MethodPost {
		var in struct {
			MaxExtents    *int   `json:"max_extents"`
			MaxBytes      *int64 `json:"max_bytes"`
			StarWholeDisk *bool  `json:"star_whole_disk"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return badRequest("config: %v", err)
		}
		if in.MaxExtents != nil && *in.MaxExtents < 0 || in.MaxBytes != nil && *in.MaxBytes < 0 {
			return badRequest("max_extents and max_bytes must not be negative (0: no limit)")
		}
		if in.MaxExtents != nil {
			x.cfg.MaxExtents = *in.MaxExtents
		}
		if in.MaxBytes != nil {
			x.cfg.MaxBytes = *in.MaxBytes
		}
		if in.StarWholeDisk != nil {
			x.cfg.StarWholeDisk = *in.StarWholeDisk
		}
	}
	writeJSON(w, http.StatusOK, x.cfg)
	return nil
}

func (x *ext) apiFault(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodPost:
		var f faultSpec
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return badRequest("fault: %v", err)
		}
		added, err := x.faults.add(&f)
		if err != nil {
			return badRequest("%v", err)
		}
		writeJSON(w, http.StatusCreated, added)
	case http.MethodDelete:
		x.faults.clear()
		writeJSON(w, http.StatusOK, map[string][]faultSpec{"faults": {}})
	default:
		writeJSON(w, http.StatusOK, map[string][]faultSpec{"faults": x.faults.snapshot()})
	}
	return nil
}

// state ---------------------------------------------------------------------------

type layerJSON struct {
	File     string `json:"file"`
	FlatPath string `json:"flat_path"`
	Snapshot string `json:"snapshot,omitempty"`
	ChangeID string `json:"change_id,omitempty"`
	Capacity int64  `json:"capacity"`
}

type diskJSON struct {
	Key              int32       `json:"key"`
	UUID             string      `json:"uuid"`
	Capacity         int64       `json:"capacity"`
	File             string      `json:"file"`
	Datastore        string      `json:"datastore"`
	FlatPath         string      `json:"flat_path"`
	ChangeID         string      `json:"change_id,omitempty"`
	AllocatedExtents [][2]int64  `json:"allocated_extents"`
	Layers           []layerJSON `json:"layers"`
}

type vmJSON struct {
	VM         string     `json:"vm"`
	Name       string     `json:"name"`
	PowerState string     `json:"power_state"`
	CBTEnabled bool       `json:"cbt_enabled"`
	CBTActive  bool       `json:"cbt_active"`
	CBTPending bool       `json:"cbt_pending"`
	Snapshots  []string   `json:"snapshots"`
	Disks      []diskJSON `json:"disks"`
}

type stateJSON struct {
	BlockSize int64     `json:"block_size"`
	Config    cbtConfig `json:"config"`
	VMs       []vmJSON  `json:"vms"`
}

// dsRelative splits "[ds] dir/file.vmdk" into "ds" and "dir/file-flat.vmdk".
func dsRelative(file string) (string, string) {
	var p object.DatastorePath
	p.FromString(file)
	return p.Datastore, flatName(p.Path)
}

func (x *ext) apiState(w http.ResponseWriter, r *http.Request) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var vms []*simulator.VirtualMachine
	if id := r.URL.Query().Get("vm"); id != "" {
		vm := lookupVM(id)
		if vm == nil {
			return notFound("no VM %q", id)
		}
		vms = append(vms, vm)
	} else {
		for _, e := range simulator.Map.All("VirtualMachine") {
			vms = append(vms, e.(*simulator.VirtualMachine))
		}
		sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	}
	out := stateJSON{BlockSize: x.blockSize, Config: x.cfg, VMs: []vmJSON{}}
	for _, vm := range vms {
		st, err := x.ensureVM(vm)
		if err != nil {
			return err
		}
		v := vmJSON{VM: vm.Self.Value, CBTActive: st.cbtActive, CBTPending: st.cbtPending, Snapshots: []string{}, Disks: []diskJSON{}}
		simulator.Map.WithLock(vm, func() {
			v.Name = vm.Name
			v.PowerState = string(vm.Runtime.PowerState)
			if vm.Config != nil {
				v.CBTEnabled = isTrue(vm.Config.ChangeTrackingEnabled)
			}
		})
		for _, s := range st.snaps {
			v.Snapshots = append(v.Snapshots, s.Value)
		}
		for _, k := range st.keys {
			d := st.disks[k]
			if err := x.own(d); err != nil { // a test may read the running layer's file itself
				return err
			}
			ds, flat := dsRelative(d.live().file)
			dj := diskJSON{Key: k, UUID: d.uuid, Capacity: d.capacity, File: d.live().file, Datastore: ds, FlatPath: flat,
				AllocatedExtents: [][2]int64{}}
			if d.epoch != "" {
				dj.ChangeID = changeID(d.epoch, d.gen)
			}
			_, runs := scanExtents(func(b int) bool { return d.alloc[b] }, x.blockSize, d.capacity, 0, 0, 0)
			for _, e := range runs {
				dj.AllocatedExtents = append(dj.AllocatedExtents, [2]int64{e.start, e.length})
			}
			for _, l := range d.layers {
				_, lflat := dsRelative(l.file)
				lj := layerJSON{File: l.file, FlatPath: lflat, Capacity: d.capacity}
				if l.fz != nil {
					lj.Snapshot, lj.ChangeID, lj.Capacity = l.snap.Value, l.fz.changeID, l.fz.capacity
				}
				dj.Layers = append(dj.Layers, lj)
			}
			v.Disks = append(v.Disks, dj)
		}
		out.VMs = append(out.VMs, v)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
