// Command go-nethttp: the stackbench contract served by Go's net/http, the archetype of the
// stackful model outside Python (a goroutine per connection, blocking-looking code, implicit
// yields, and preemption). `stackbench serve go-nethttp` builds it (servers/native/) and
// execs it with the Python servers' options; it is one process, on --cores cores
// (GOMAXPROCS, 1 by default as the Python servers have one).
//
// --measure-cgo N prints what a call into C costs, in JSON, and exits; --measure-tasks N
// --depth D what a parked goroutine costs (tasks.go); --bare serves the benchmarks' bare
// reference (bare.go); --encode-lag prints the /lag body of the lags on stdin (hdr.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

func main() {
	var o options
	var drain, idle, header float64
	var measure int
	flag.StringVar(&o.impl, "impl", "go-nethttp", "the implementation's name")
	flag.StringVar(&o.host, "host", "127.0.0.1", "address")
	flag.IntVar(&o.port, "port", 8080, "port, 0 for any")
	flag.Float64Var(&drain, "drain-timeout", 10, "seconds in-flight requests get on SIGTERM/SIGINT")
	flag.Float64Var(&idle, "idle-timeout", 60, "seconds a connection may send nothing")
	flag.Float64Var(&header, "header-timeout", 10, "seconds a request head may take to arrive")
	flag.IntVar(&o.maxConnections, "max-connections", 10_000, "open connections before shedding")
	flag.IntVar(&o.cores, "cores", 1, "GOMAXPROCS")
	noMetrics := flag.Bool("no-metrics", false, "switch telemetry off")
	flag.StringVar(&o.upstream, "upstream", "", "what GET /upstream calls (http://host:port)")
	flag.IntVar(&o.upstreamPool, "upstream-pool", 100, "connections to the upstream")
	flag.Float64Var(&o.upstreamTimeout, "upstream-timeout", 10, "deadline of an /upstream request's calls")
	flag.IntVar(&measure, "measure-cgo", 0, "print the cost of N cgo calls (JSON) and exit")
	tasks := flag.Int("measure-tasks", 0, "park N goroutines, print their cost (JSON) and exit")
	depth := flag.Int("depth", 0, "--measure-tasks: calls deep each goroutine parks")
	bare := flag.Bool("bare", false, "serve Hello, World! with net/http alone (the benchmarks' reference)")
	encode := flag.Bool("encode-lag", false, "record the microseconds on stdin as lag ticks, print the /lag body and exit")
	flag.Parse()
	if o.cores < 1 {
		fail("--cores must be at least 1")
	}
	runtime.GOMAXPROCS(o.cores)
	switch {
	case measure > 0:
		measureCgo(measure)
		return
	case *tasks > 0:
		measureTasks(*tasks, *depth)
		return
	case *bare:
		serveBare(o.host, o.port)
		return
	case *encode:
		if err := encodeLag(os.Stdin, os.Stdout); err != nil {
			fail("--encode-lag: " + err.Error())
		}
		return
	}
	o.metrics = !*noMetrics
	o.drainTimeout = seconds(drain)
	o.idleTimeout = seconds(idle)
	o.headerTimeout = seconds(header)

	s, err := newServer(o)
	if err != nil {
		fail(err.Error())
	}
	ln := bind(o.host, o.port)
	srv := &http.Server{
		// Query strings are the contract's to read (from the raw target): net/http would log
		// every one holding a ';'.
		Handler:        http.AllowQuerySemicolons(s),
		ConnContext:    func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
		ErrorLog:       log.New(os.Stderr, "stackbench "+o.impl+": ", 0),
		MaxHeaderBytes: 1 << 20, // the policy's 64 KiB applies first (conn.go)
		// No ReadTimeout, ReadHeaderTimeout, IdleTimeout: conn.go applies the policy's.
	}
	if s.tel.enabled {
		go s.tel.monitorLag()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(&listener{Listener: ln, srv: s}) }()
	addr := ln.Addr().(*net.TCPAddr)
	fmt.Printf("stackbench %s listening on http://%s\n", o.impl, net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port)))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
	case err := <-served:
		fail("serving: " + err.Error())
	}
	// Drain: stop accepting, close idle connections, give in-flight requests the drain
	// timeout, then exit 0. (Shutdown closes idle keep-alive connections; those that have
	// not sent a first request yet it would wait 5 s for: closed here.)
	ctx, cancel := context.WithTimeout(context.Background(), o.drainTimeout)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	for {
		s.closeIdle()
		select {
		case err := <-shut:
			if err != nil {
				srv.Close() // the drain timeout passed
			}
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	if s.up != nil {
		s.up.close()
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// bind: the listening socket, with the one-line errors lifecycle.bind gives.
func bind(host string, port int) net.Listener {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err == nil {
		return ln
	}
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		fail(fmt.Sprintf("port %d on %s is already in use; stop what holds it or pick another with --port", port, host))
	case errors.As(err, &dnsErr):
		fail(fmt.Sprintf("cannot resolve host '%s': %s", host, dnsErr.Err))
	}
	fail(fmt.Sprintf("cannot listen on %s:%d: %v", host, port, err))
	return nil
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "stackbench: error: "+message)
	os.Exit(2)
}
