// Command vmkeep-vcsim runs govmomi's vCenter simulator with what a backup agent
// needs on top: changed block tracking (QueryChangedDiskAreas), real sparse disk
// content served by /folder, snapshots that freeze that content, fault injection
// and a test-only API under /vmkeep-test/.
//
// It listens on 127.0.0.1 only. When ready it prints one JSON line on stdout
// (url, host, port, pid, dir, ...); everything else goes to stderr.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

// passwordEnv names the environment variable that carries the login password.
// Secrets never go on the command line.
const passwordEnv = "VMKEEP_VCSIM_PASSWORD"

type options struct {
	port          int
	dirParent     string
	user          string
	passwordFile  string
	password      string
	tlsCert       string
	tlsKey        string
	tlsDefault    bool
	vms           int
	diskMB        int
	blockKB       int
	maxExtents    int
	maxBytes      int64
	dsType        string
	starWhole     string
	idleTimeout   time.Duration
	exitOnEOF     bool
	testAPI       bool
	trace         bool
	shutdownGrace time.Duration
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("vmkeep-vcsim", flag.ContinueOnError)
	fs.IntVar(&o.port, "port", 0, "TCP port on 127.0.0.1 (0: an ephemeral port, reported on stdout)")
	fs.StringVar(&o.dirParent, "dir", "", "parent directory of the temporary datastore directory (default: $TMPDIR)")
	fs.StringVar(&o.user, "user", "user", "login user name")
	fs.StringVar(&o.passwordFile, "password-file", "", "file holding the login password (else $"+passwordEnv+", else \"pass\")")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate (chain) for HTTPS; needs -tls-key")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for -tls-cert")
	fs.BoolVar(&o.tlsDefault, "tls", false, "serve HTTPS with the simulator's built-in (1024-bit) certificate")
	fs.IntVar(&o.vms, "vm", 2, "virtual machines per host and per cluster resource pool")
	fs.IntVar(&o.diskMB, "disk-mb", 16, "capacity of each inventory VM's disk, in MiB")
	fs.IntVar(&o.blockKB, "cbt-block-kb", 64, "change tracking granularity, in KiB (power of two, 4..1024)")
	fs.IntVar(&o.maxExtents, "cbt-max-extents", 2000, "at most this many extents per QueryChangedDiskAreas answer (0: no limit)")
	fs.Int64Var(&o.maxBytes, "cbt-max-bytes", 0, "at most this many bytes of the disk covered per answer (0: no limit)")
	fs.StringVar(&o.dsType, "datastore-type", "VMFS", "summary.type of the datastores (VMFS or NFS)")
	fs.StringVar(&o.starWhole, "star-whole-disk", "auto", "changeId \"*\" answers one extent covering the whole disk: true, false, or auto (true on NFS)")
	fs.DurationVar(&o.idleTimeout, "session-idle-timeout", 0, "expire idle sessions after this long (0: never)")
	fs.BoolVar(&o.exitOnEOF, "exit-on-stdin-eof", false, "shut down when stdin reaches EOF (the parent went away)")
	fs.BoolVar(&o.testAPI, "test-api", true, "serve the test-only endpoints under "+testPrefix)
	fs.BoolVar(&o.trace, "trace", false, "write SOAP traffic to stderr")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 3*time.Second, "how long to wait for requests in flight at shutdown")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if o.port < 0 || o.port > 65535 {
		return nil, fmt.Errorf("bad -port %d", o.port)
	}
	if o.blockKB < 4 || o.blockKB > 1024 || o.blockKB&(o.blockKB-1) != 0 {
		return nil, fmt.Errorf("bad -cbt-block-kb %d", o.blockKB)
	}
	if o.diskMB < 1 || o.vms < 0 || o.maxExtents < 0 || o.maxBytes < 0 {
		return nil, errors.New("-disk-mb must be positive; -vm, -cbt-max-extents and -cbt-max-bytes must not be negative")
	}
	o.dsType = strings.ToUpper(o.dsType)
	if o.dsType != "VMFS" && o.dsType != "NFS" {
		return nil, fmt.Errorf("bad -datastore-type %q", o.dsType)
	}
	switch o.starWhole {
	case "auto", "true", "false":
	default:
		return nil, fmt.Errorf("bad -star-whole-disk %q", o.starWhole)
	}
	pw, err := readPassword(o.passwordFile)
	if err != nil {
		return nil, err
	}
	o.password = pw
	return o, nil
}

func readPassword(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading -password-file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if pw, ok := os.LookupEnv(passwordEnv); ok {
		_ = os.Unsetenv(passwordEnv)
		return pw, nil
	}
	return "pass", nil
}

// ready is the single JSON line printed on stdout once the server accepts connections.
type ready struct {
	URL       string `json:"url"`
	Scheme    string `json:"scheme"`
	Host      string `json:"host"`
	Port      int    `json:"port"`
	PID       int    `json:"pid"`
	Dir       string `json:"dir"`
	User      string `json:"user"`
	TestAPI   string `json:"test_api,omitempty"`
	BlockSize int64  `json:"block_size"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vmkeep-vcsim: ")
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vmkeep-vcsim:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(o *options) (err error) {
	// Catch signals from the start: one that arrives while starting up is acted
	// on once the server runs, so the directory below is still removed.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)

	root, err := os.MkdirTemp(o.dirParent, "vmkeep-vcsim-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(root); rerr != nil && err == nil {
			err = rerr
		}
	}()
	// The simulator makes its datastore directories with ioutil.TempDir(""),
	// so point $TMPDIR at our root: everything then lives (and dies) under it.
	if err := os.Setenv("TMPDIR", root); err != nil {
		return err
	}

	simulator.Trace = o.trace
	simulator.SessionIdleTimeout = o.idleTimeout

	model := simulator.VPX()
	model.Machine = o.vms
	if err := model.Create(); err != nil {
		return fmt.Errorf("creating the inventory: %w", err)
	}
	defer model.Remove()

	svc := model.Service
	svc.Listen = &url.URL{
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(o.port)),
		User: url.UserPassword(o.user, o.password),
	}
	switch {
	case o.tlsCert != "":
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fmt.Errorf("loading the TLS certificate: %w", err)
		}
		svc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	case o.tlsDefault:
		svc.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}

	x, err := newExt(o)
	if err != nil {
		return err
	}
	if err := x.prepareInventory(); err != nil {
		return fmt.Errorf("preparing the inventory: %w", err)
	}

	srv := svc.NewServer()
	x.inner = srv.Config.Handler
	srv.Config.Handler = x
	x.login = srv.URL.User

	info := ready{
		URL:       (&url.URL{Scheme: srv.URL.Scheme, Host: srv.URL.Host, Path: srv.URL.Path}).String(),
		Scheme:    srv.URL.Scheme,
		Host:      srv.URL.Hostname(),
		PID:       os.Getpid(),
		Dir:       root,
		User:      o.user,
		BlockSize: x.blockSize,
	}
	info.Port, _ = strconv.Atoi(srv.URL.Port())
	if o.testAPI {
		info.TestAPI = (&url.URL{Scheme: srv.URL.Scheme, Host: srv.URL.Host, Path: testPrefix}).String()
	}
	line, _ := json.Marshal(info)
	out := bufio.NewWriter(os.Stdout)
	_, _ = out.Write(append(line, '\n'))
	if err := out.Flush(); err != nil {
		srv.Close()
		return err
	}
	log.Printf("serving %s (datastores under %s)", info.URL, root)

	stop := make(chan string, 2)
	go func() { stop <- (<-sigs).String() }()
	if o.exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- "stdin closed"
		}()
	}
	why := <-stop
	log.Printf("shutting down (%s)", why)

	done := make(chan struct{})
	go func() {
		srv.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(o.shutdownGrace):
		log.Printf("requests still in flight after %s; exiting anyway", o.shutdownGrace)
	}
	return nil
}
