package main

import (
	"bytes"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"runtime/debug"
	"strings"

	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// Our own SOAP answers: envelopes are written here, the payload (a result or a
// fault's detail) is encoded by govmomi's xml package from the vim25 types, so
// pyVmomi parses it like the simulator's own answers.

const (
	envelopeOpen = xml.Header + `<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/"` +
		` xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"` +
		` xmlns:xsd="http://www.w3.org/2001/XMLSchema"` +
		` xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
	envelopeClose = `</soapenv:Body></soapenv:Envelope>`
	vimNamespace  = "urn:vim25"
)

func writeEnvelope(w http.ResponseWriter, status int, payload []byte) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(envelopeOpen))
	_, _ = w.Write(payload)
	_, _ = w.Write([]byte(envelopeClose))
}

func encodeElement(name string, v interface{}, attrs ...xml.Attr) ([]byte, error) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	start := xml.StartElement{Name: xml.Name{Local: name}, Attr: attrs}
	if err := enc.EncodeElement(v, start); err != nil {
		return nil, err
	}
	if err := enc.Flush(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func escapeText(s string) string {
	var buf bytes.Buffer
	_ = xml.EscapeText(&buf, []byte(s))
	return buf.String()
}

// writeFault answers with a SOAP fault whose detail is the given vim fault,
// e.g. <FileFaultFault xmlns="urn:vim25" xsi:type="FileFault">.
func writeFault(w http.ResponseWriter, fault types.BaseMethodFault, msg string) {
	kind := reflect.TypeOf(fault).Elem().Name()
	detail, err := encodeElement(kind+"Fault", fault,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: vimNamespace},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var b bytes.Buffer
	b.WriteString("<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>")
	b.WriteString(escapeText(msg))
	b.WriteString("</faultstring><detail>")
	b.Write(detail)
	b.WriteString("</detail></soapenv:Fault>")
	writeEnvelope(w, http.StatusInternalServerError, b.Bytes())
}

// writeResult answers <{method}Response xmlns="urn:vim25"><{elem}>v</{elem}></...>.
func writeResult(w http.ResponseWriter, method, elem string, v interface{}) {
	inner, err := encodeElement(elem, v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<%sResponse xmlns="%s">`, method, vimNamespace)
	b.Write(inner)
	fmt.Fprintf(&b, `</%sResponse>`, method)
	writeEnvelope(w, http.StatusOK, b.Bytes())
}

func writeTaskResult(w http.ResponseWriter, method string, task types.ManagedObjectReference) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<%sResponse xmlns="%s"><returnval type="%s">%s</returnval></%sResponse>`,
		method, vimNamespace, escapeText(task.Type), escapeText(task.Value), method)
	writeEnvelope(w, http.StatusOK, b.Bytes())
}

// sniffMethod returns the name of the method element inside the SOAP Body,
// without decoding its arguments.
func sniffMethod(body []byte) string {
	dec := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok {
			if inBody {
				return se.Name.Local
			}
			if se.Name.Local == "Body" {
				inBody = true
			}
		}
	}
}

// forward runs a request through the simulator and returns its recorded answer.
func (x *ext) forward(r *http.Request, body []byte) *httptest.ResponseRecorder {
	req := r.Clone(r.Context())
	req.Body = httpBody(body)
	req.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	func() {
		defer func() {
			if p := recover(); p != nil {
				log.Printf("simulator panic: %v\n%s", p, debug.Stack())
				rec = httptest.NewRecorder()
				msg := fmt.Sprintf("simulator panic: %v", p)
				writeFault(rec, &types.SystemError{Reason: msg}, msg)
			}
		}()
		x.inner.ServeHTTP(rec, req)
	}()
	return rec
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

var taskReturn = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

// taskOf extracts the task moref from a recorded *_Task answer.
func taskOf(rec *httptest.ResponseRecorder) (types.ManagedObjectReference, bool) {
	if rec.Code != http.StatusOK {
		return types.ManagedObjectReference{}, false
	}
	m := taskReturn.FindSubmatch(rec.Body.Bytes())
	if m == nil {
		return types.ManagedObjectReference{}, false
	}
	return types.ManagedObjectReference{Type: "Task", Value: string(m[1])}, true
}

// sessionValid asks the simulator whether the request's vmware_soap_session
// cookie names a live session, by replaying it on a call that needs one.
func (x *ext) sessionValid(r *http.Request) bool {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil || c.Value == "" {
		return false
	}
	const probe = envelopeOpen + `<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>` + envelopeClose
	req := httptest.NewRequest(http.MethodPost, sdkPath, strings.NewReader(probe))
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.AddCookie(&http.Cookie{Name: soap.SessionCookieName, Value: c.Value})
	req.RemoteAddr = r.RemoteAddr
	req.Header.Set("User-Agent", r.UserAgent())
	rec := httptest.NewRecorder()
	x.inner.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

// basicAuthValid accepts HTTP basic authentication with the login's credentials,
// which ESXi and vCenter also accept on /folder.
func (x *ext) basicAuthValid(r *http.Request) bool {
	u, p, ok := r.BasicAuth()
	if !ok || x.login == nil {
		return false
	}
	want, _ := x.login.Password()
	return u == x.login.Username() && p == want
}
