package main

// The synchronous "legacy library" of GET /blocking (contract.legacy_blocking_call), and what
// a call into C costs (--measure-cgo).
//
// kind "python" stands for an ordinary blocking call in the server's own language: in Go, a
// real blocking system call (nanosleep(2) through package syscall), which blocks the
// goroutine's OS thread only. kind "c" blocks inside C, in libc's usleep through cgo. Either
// way the goroutine keeps its thread for the whole call, and the runtime's sysmon hands the
// processor (P) the other goroutines need to another thread once the call has run 20 us: no
// other request stalls, at the price of a thread per blocked call. Nothing is coloured, so
// offload=1 has nothing to do in Go: the call is made directly either way (handler.go).

/*
#include <unistd.h>

static void stackbench_nothing(void) {}
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"syscall"
	"time"
)

const cSliceUS = 100_000 // usleep may refuse a second or more: C waits in slices of this

func legacyBlockingCall(ms int, kind string) {
	if kind == "python" {
		left := syscall.NsecToTimespec(int64(ms) * int64(time.Millisecond))
		for left.Sec > 0 || left.Nsec > 0 {
			var rest syscall.Timespec
			if syscall.Nanosleep(&left, &rest) != syscall.EINTR {
				break
			}
			left = rest // a signal (the runtime sends some) cut it short
		}
		return
	}
	for left := ms * 1000; left > 0; left -= cSliceUS {
		slice := left
		if slice > cSliceUS {
			slice = cSliceUS
		}
		C.usleep(C.useconds_t(slice))
	}
}

//go:noinline
func goNothing() {}

func cgoLoop(n int) {
	for i := 0; i < n; i++ {
		C.stackbench_nothing()
	}
}

func goLoop(n int) {
	for i := 0; i < n; i++ {
		goNothing()
	}
}

// measureCgo prints what one call of an empty C function costs through cgo, beside one call
// of an empty Go function the compiler may not inline: the best of several runs of n calls
// each, in nanoseconds per call.
func measureCgo(n int) {
	const runs = 5
	C.stackbench_nothing() // the first cgo call sets things up
	best := func(loop func(int)) float64 {
		fastest := math.Inf(1)
		for run := 0; run < runs; run++ {
			started := time.Now()
			loop(n)
			if per := float64(time.Since(started).Nanoseconds()) / float64(n); per < fastest {
				fastest = per
			}
		}
		return math.Round(fastest*100) / 100
	}
	cgo := best(cgoLoop)
	goCall := best(goLoop)
	out, _ := json.Marshal(map[string]float64{"cgo_call_ns": cgo, "go_call_ns": goCall})
	fmt.Fprintln(os.Stdout, string(out))
}
