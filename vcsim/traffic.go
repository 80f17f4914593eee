package main

import (
	"net/http"
	"sync/atomic"
)

// traffic counts the disk data served by /folder, so that tests can check what a backup
// read at the source (GET /vmkeep-test/traffic), over the real HTTP path.
type traffic struct {
	getRequests atomic.Int64 // GET requests on /folder that served a file
	getBytes    atomic.Int64 // body bytes those requests sent
}

type trafficJSON struct {
	FolderGetRequests int64 `json:"folder_get_requests"`
	FolderGetBytes    int64 `json:"folder_get_bytes"`
}

func (t *traffic) snapshot() trafficJSON {
	return trafficJSON{FolderGetRequests: t.getRequests.Load(), FolderGetBytes: t.getBytes.Load()}
}

// countingWriter adds the body bytes it writes to a counter.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (x *ext) apiTraffic(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, x.traffic.snapshot())
	return nil
}
