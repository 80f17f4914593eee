package main

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/vmware/govmomi/vim25/types"
)

// Fault injection, switched on at run time through POST /vmkeep-test/fault.
//
//	task    a *_Task method returns a task that has already failed (the method does nothing)
//	soap    a method answers a SOAP fault at once
//	delay   a SOAP method or an HTTP path answers only after some seconds
//	drop    an HTTP path: the connection is cut after after_bytes bytes of the
//	        answer (GET) or of the upload (PUT)
//	status  a SOAP method or an HTTP path answers a bare HTTP status (e.g. 503)
//
// Each fault fires count times (default 1; -1: until cleared).

const (
	faultTask   = "task"
	faultSOAP   = "soap"
	faultDelay  = "delay"
	faultDrop   = "drop"
	faultStatus = "status"
)

type faultSpec struct {
	ID           int     `json:"id"`
	Kind         string  `json:"kind"`
	Method       string  `json:"method,omitempty"`
	PathContains string  `json:"path_contains,omitempty"`
	HTTPMethod   string  `json:"http_method,omitempty"`
	AfterBytes   int64   `json:"after_bytes,omitempty"`
	Seconds      float64 `json:"seconds,omitempty"`
	Status       int     `json:"status,omitempty"`
	Fault        string  `json:"fault,omitempty"`
	Message      string  `json:"message,omitempty"`
	Count        *int    `json:"count,omitempty"`
	Remaining    int     `json:"remaining"`
	Hits         int     `json:"hits"`
}

type faultSet struct {
	mu     sync.Mutex
	nextID int
	list   []*faultSpec
}

func newFaultSet() *faultSet { return &faultSet{nextID: 1} }

// methodFault instantiates the vim fault type named by f.Fault (SystemError by default).
func (f *faultSpec) methodFault() (types.BaseMethodFault, string) {
	msg := f.Message
	if msg == "" {
		msg = "fault injected by vmkeep-test"
	}
	name := f.Fault
	if name == "" {
		name = "SystemError"
	}
	fault, _ := newMethodFault(name)
	switch v := fault.(type) {
	case *types.SystemError:
		v.Reason = msg
	case *types.FileFault:
		v.File = msg
	case *types.InvalidArgument:
		v.InvalidProperty = msg
	}
	return fault, msg
}

func newMethodFault(name string) (types.BaseMethodFault, error) {
	t, ok := types.TypeFunc()(name)
	if !ok || t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("unknown fault type %q", name)
	}
	f, ok := reflect.New(t).Interface().(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a fault type", name)
	}
	return f, nil
}

func (s *faultSet) add(f *faultSpec) (*faultSpec, error) {
	f.HTTPMethod = strings.ToUpper(f.HTTPMethod)
	switch f.Kind {
	case faultTask:
		if !strings.HasSuffix(f.Method, "_Task") {
			return nil, errors.New(`kind "task" needs "method" naming a *_Task method`)
		}
	case faultSOAP:
		if f.Method == "" {
			return nil, errors.New(`kind "soap" needs "method"`)
		}
	case faultDelay:
		if (f.Method == "") == (f.PathContains == "") || f.Seconds <= 0 {
			return nil, errors.New(`kind "delay" needs one of "method" and "path_contains", and "seconds" > 0`)
		}
	case faultDrop:
		if f.PathContains == "" || f.AfterBytes < 0 {
			return nil, errors.New(`kind "drop" needs "path_contains" and "after_bytes" >= 0`)
		}
	case faultStatus:
		if (f.Method == "") == (f.PathContains == "") || f.Status < 400 || f.Status > 599 {
			return nil, errors.New(`kind "status" needs one of "method" and "path_contains", and a "status" of 400-599`)
		}
	default:
		return nil, fmt.Errorf("unknown kind %q (task, soap, delay, drop, status)", f.Kind)
	}
	if f.Kind == faultTask || f.Kind == faultSOAP {
		if f.Fault != "" {
			if _, err := newMethodFault(f.Fault); err != nil {
				return nil, err
			}
		}
	}
	f.Remaining = 1
	if f.Count != nil {
		if *f.Count == 0 || *f.Count < -1 {
			return nil, errors.New(`"count" must be positive, or -1 for "until cleared"`)
		}
		f.Remaining = *f.Count
	}
	f.Count = nil
	s.mu.Lock()
	defer s.mu.Unlock()
	f.ID = s.nextID
	s.nextID++
	s.list = append(s.list, f)
	return f, nil
}

func (f *faultSpec) matches(kind, method string, r *http.Request) bool {
	if f.Kind != kind || f.Remaining == 0 {
		return false
	}
	if f.HTTPMethod != "" && f.HTTPMethod != r.Method {
		return false
	}
	if f.Method != "" {
		return f.Method == method
	}
	return f.PathContains != "" && strings.Contains(r.URL.RequestURI(), f.PathContains)
}

// take consumes one firing of the first matching fault of this kind.
func (s *faultSet) take(kind, method string, r *http.Request) *faultSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.list {
		if f.matches(kind, method, r) {
			if f.Remaining > 0 {
				f.Remaining--
			}
			f.Hits++
			c := *f
			return &c
		}
	}
	return nil
}

// pending reports whether a fault of this kind is armed for a SOAP method.
func (s *faultSet) pending(kind, method string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.list {
		if f.Kind == kind && f.Method == method && f.Remaining != 0 {
			return true
		}
	}
	return false
}

func (s *faultSet) snapshot() []faultSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]faultSpec, 0, len(s.list))
	for _, f := range s.list {
		out = append(out, *f)
	}
	return out
}

func (s *faultSet) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = nil
}

// dropWriter cuts the connection once limit bytes of the body have been written.
type dropWriter struct {
	http.ResponseWriter
	limit   int64
	written int64
}

func (d *dropWriter) Write(p []byte) (int, error) {
	if d.written+int64(len(p)) <= d.limit {
		n, err := d.ResponseWriter.Write(p)
		d.written += int64(n)
		return n, err
	}
	n, _ := d.ResponseWriter.Write(p[:d.limit-d.written])
	d.written += int64(n)
	if fl, ok := d.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
	panic(http.ErrAbortHandler)
}
