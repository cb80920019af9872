package main

// --bare: the best case go-nethttp is compared with (benchmarks/launch.py), as pywsgi is
// gevent's: net/http on the same GOMAXPROCS with one handler that answers "Hello, World!", and
// nothing of stackbench's (no head gate, no telemetry, no contract).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func serveBare(host string, port int) {
	ln := bind(host, port)
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("Hello, World!"))
	})
	srv := &http.Server{Handler: hello}
	go srv.Serve(ln) // net/http sets TCP_NODELAY on accepted connections itself
	addr := ln.Addr().(*net.TCPAddr)
	fmt.Printf("bare go_nethttp listening on http://%s\n", net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port)))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
