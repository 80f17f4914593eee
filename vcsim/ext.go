package main

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ext is the HTTP handler that sits in front of the simulator's own mux.
//
// Locking: x.mu serialises every hooked SOAP call (pre-hook, the simulator's
// own work, post-hook), guest writes and layer changes. The order is always
// x.mu first, then simulator.Map.WithLock(obj); the simulator never takes x.mu.
// Unhooked SOAP calls (property reads and the like) run without x.mu and rely on
// the simulator's per-object locks, which the hooks also take when they touch
// an object.
type ext struct {
	opts      *options
	inner     http.Handler
	login     *url.Userinfo
	blockSize int64
	typeFunc  func(string) (reflect.Type, bool)
	faults    *faultSet
	traffic   traffic

	mu  sync.Mutex
	vms map[types.ManagedObjectReference]*vmState
	cfg cbtConfig

	snapRecord map[string]*hostSnapshots // concurrent snapshots per host (snapshots.go)
}

// cbtConfig holds the QueryChangedDiskAreas knobs that tests may change at run time.
type cbtConfig struct {
	MaxExtents    int   `json:"max_extents"`
	MaxBytes      int64 `json:"max_bytes"`
	StarWholeDisk bool  `json:"star_whole_disk"`
}

func newExt(o *options) (*ext, error) {
	x := &ext{
		opts:      o,
		blockSize: int64(o.blockKB) * 1024,
		typeFunc:  types.TypeFunc(),
		faults:    newFaultSet(),
		vms:       make(map[types.ManagedObjectReference]*vmState),
	}
	x.cfg.MaxExtents = o.maxExtents
	x.cfg.MaxBytes = o.maxBytes
	switch o.starWhole {
	case "true":
		x.cfg.StarWholeDisk = true
	case "auto":
		x.cfg.StarWholeDisk = o.dsType == "NFS"
	}
	return x, nil
}

const (
	sdkPath      = "/sdk"
	folderPrefix = "/folder/"
	testPrefix   = "/vmkeep-test/"
)

func (x *ext) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, testPrefix) || p == strings.TrimSuffix(testPrefix, "/"):
		if !x.opts.testAPI {
			http.NotFound(w, r)
			return
		}
		x.serveTestAPI(w, r)
	case strings.HasPrefix(p, folderPrefix):
		x.serveFolder(w, r)
	case (p == sdkPath || p == sdkPath+"/vimService") && r.Method == http.MethodPost:
		x.serveSOAP(w, r)
	default:
		x.inner.ServeHTTP(w, r)
	}
}

// prepareInventory gives the model's VMs real, sparse disks of the requested
// size, registers the stock-defect fixes and sets the datastore type.
func (x *ext) prepareInventory() error {
	installFixes()

	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		simulator.Map.WithLock(ds, func() {
			ds.Summary.Type = x.opts.dsType
		})
	}

	capacity := int64(x.opts.diskMB) * 1024 * 1024
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			for _, d := range vm.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					disk.CapacityInBytes = capacity
					disk.CapacityInKB = capacity / 1024
				}
			}
		})
		if _, err := x.ensureVM(vm); err != nil {
			return err
		}
	}
	return nil
}
