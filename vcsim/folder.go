package main

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// /folder/<path>?dcPath=<datacenter>&dsName=<datastore>: datastore file access
// as on vCenter and ESXi. Unlike the stock simulator it needs a valid
// vmware_soap_session cookie (or HTTP basic authentication with the login),
// both dcPath and dsName, and it knows about disk layers:
//   - GET/HEAD serve any file with byte ranges; a snapshot's frozen layer serves
//     the frozen bytes.
//   - PUT needs Content-Length; it is stored only once complete. A PUT of a
//     disk's running "-flat.vmdk" (VM powered off) replaces the disk's content
//     and counts as a write of every block that held or holds data; a PUT of a
//     frozen layer, or of a powered-on VM's disk, answers 403.

type folderTarget struct {
	local string // file on this machine
	vm    *simulator.VirtualMachine
	st    *vmState
	d     *disk
	layer int // index in d.layers, -1 if not a disk layer
}

func (x *ext) serveFolder(w http.ResponseWriter, r *http.Request) {
	if !x.sessionValid(r) && !x.basicAuthValid(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
		http.Error(w, "401 Unauthorized: a valid vmware_soap_session cookie is required", http.StatusUnauthorized)
		return
	}
	if f := x.faults.take(faultDelay, "", r); f != nil {
		time.Sleep(time.Duration(f.Seconds * float64(time.Second)))
	}
	if f := x.faults.take(faultStatus, "", r); f != nil {
		http.Error(w, "injected by vmkeep-test", f.Status)
		return
	}
	drop := x.faults.take(faultDrop, "", r)

	local, err := resolveFolderPath(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}

	switch r.Method {
	case http.MethodGet, http.MethodHead:
		x.folderGet(w, r, local, drop)
	case http.MethodPut:
		x.folderPut(w, r, local, drop)
	case http.MethodPost:
		x.inner.ServeHTTP(w, r) // stock: create, 409 if the file exists
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// resolveFolderPath maps the URL to a file under the named datastore.
func resolveFolderPath(r *http.Request) (string, error) {
	q := r.URL.Query()
	dcPath, dsName := q.Get("dcPath"), q.Get("dsName")
	if dcPath == "" || dsName == "" {
		return "", errors.New("dcPath and dsName are required")
	}
	dcName := path.Base(strings.Trim(dcPath, "/"))
	found := false
	for _, e := range simulator.Map.All("Datacenter") {
		if e.Entity().Name == dcName {
			found = true
			break
		}
	}
	if !found {
		return "", fmt.Errorf("no datacenter %q", dcPath)
	}
	ds := findDatastore(dsName)
	if ds == nil {
		return "", fmt.Errorf("no datastore %q", dsName)
	}
	rel := path.Clean("/" + strings.TrimPrefix(r.URL.Path, folderPrefix))
	return filepath.Join(ds.Info.GetDatastoreInfo().Url, filepath.FromSlash(rel)), nil
}

// target finds which disk layer, if any, a local file is. x.mu must be held.
func (x *ext) target(local string) folderTarget {
	t := folderTarget{local: local, layer: -1}
	for ref, st := range x.vms {
		for _, d := range st.disks {
			for i, l := range d.layers {
				p, err := flatPath(l.file)
				if err != nil || p != local {
					continue
				}
				vm, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
				t.vm, t.st, t.d, t.layer = vm, st, d, i
				return t
			}
		}
	}
	return t
}

func (x *ext) folderGet(w http.ResponseWriter, r *http.Request, local string, drop *faultSpec) {
	// Open under x.mu so the layer cannot move meanwhile; serve without it. An
	// open file keeps its bytes even if a consolidation renames over it.
	x.mu.Lock()
	if t := x.target(local); t.layer >= 0 && t.d.layers[t.layer].pending {
		if err := x.own(t.d); err != nil {
			x.mu.Unlock()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	f, err := os.Open(local)
	x.mu.Unlock()
	if err != nil {
		http.Error(w, "404 Not Found", http.StatusNotFound)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if fi.IsDir() {
		x.inner.ServeHTTP(w, r) // stock directory listing
		return
	}
	if r.Method == http.MethodGet {
		x.traffic.getRequests.Add(1)
		w = &countingWriter{ResponseWriter: w, n: &x.traffic.getBytes}
	}
	if drop != nil {
		w = &dropWriter{ResponseWriter: w, limit: drop.AfterBytes}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, fi.Name(), fi.ModTime(), f)
}

func (x *ext) folderPut(w http.ResponseWriter, r *http.Request, local string, drop *faultSpec) {
	if r.ContentLength < 0 {
		http.Error(w, "411 Length Required: send Content-Length", http.StatusLengthRequired)
		return
	}
	dir := filepath.Dir(local)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	tmp, err := os.CreateTemp(dir, ".vmkeep-upload-")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	tmpName := tmp.Name()
	keep := false
	defer func() {
		if !keep {
			_ = os.Remove(tmpName)
		}
	}()
	var src io.Reader = r.Body
	if drop != nil {
		src = io.LimitReader(r.Body, drop.AfterBytes)
	}
	n, err := io.Copy(tmp, src)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if drop != nil {
		_ = os.Remove(tmpName)
		panic(http.ErrAbortHandler)
	}
	if err != nil || n != r.ContentLength {
		http.Error(w, fmt.Sprintf("upload incomplete: %d of %d bytes: %v", n, r.ContentLength, err), http.StatusBadRequest)
		return
	}

	x.mu.Lock()
	defer x.mu.Unlock()
	t := x.target(local)
	if t.layer < 0 {
		_, statErr := os.Stat(local)
		if err := os.Rename(tmpName, local); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		keep = true
		if os.IsNotExist(statErr) {
			w.WriteHeader(http.StatusCreated)
		} else {
			w.WriteHeader(http.StatusOK)
		}
		return
	}
	if t.layer != len(t.d.layers)-1 {
		http.Error(w, "403 Forbidden: the file is a snapshot's frozen disk and is locked", http.StatusForbidden)
		return
	}
	if t.vm != nil {
		var power types.VirtualMachinePowerState
		simulator.Map.WithLock(t.vm, func() { power = t.vm.Runtime.PowerState })
		if power != types.VirtualMachinePowerStatePoweredOff {
			http.Error(w, "403 Forbidden: the disk is in use by a powered-on virtual machine", http.StatusForbidden)
			return
		}
	}
	if n > t.d.capacity {
		http.Error(w, fmt.Sprintf("400 Bad Request: %d bytes exceed the disk's capacity of %d", n, t.d.capacity), http.StatusBadRequest)
		return
	}
	if err := x.replaceContent(t.d, tmpName); err != nil {
		log.Printf("PUT %s: %v", local, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	keep = true
	if t.vm != nil {
		x.syncVM(t.vm, t.st)
	}
	w.WriteHeader(http.StatusOK)
}
