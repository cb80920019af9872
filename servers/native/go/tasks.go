package main

// --measure-tasks N --depth D: the figures `stackbench tasks` takes from every runtime
// (loadtest/orchestrator/tasks.py measures the Python ones the same way), for goroutines:
// park N goroutines, each D calls deep, on a channel; report the growth of the process's RSS
// over them, the time to spawn them all (until every one is parked), and the time of one
// switch between two goroutines handing a value back and forth on one processor.

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

const switches = 20_000 // tasks.SWITCHES

//go:noinline
func nest(depth int, park func()) {
	if depth <= 0 {
		park()
		return
	}
	nest(depth-1, park)
}

// rss: the process's resident set, after a collection (as tasks._rss measures it).
func rss() int64 {
	runtime.GC()
	var pages, resident int64
	if f, err := os.Open("/proc/self/statm"); err == nil {
		fmt.Fscan(f, &pages, &resident)
		f.Close()
	}
	return resident * int64(os.Getpagesize())
}

func measureTasks(n, depth int) {
	release := make(chan struct{})
	var parked, ended sync.WaitGroup
	parked.Add(n)
	ended.Add(n)
	park := func() {
		parked.Done()
		<-release
	}
	before := rss()
	started := time.Now()
	for i := 0; i < n; i++ {
		go func() {
			nest(depth, park)
			ended.Done()
		}()
	}
	parked.Wait() // every goroutine has reached its park point
	spawn := time.Since(started).Seconds()
	after := rss()
	close(release)
	ended.Wait()
	runtime.GC() // the parked goroutines' garbage, not the switches, pays for this

	ping, pong := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		for i := 0; i < switches/2; i++ {
			<-ping
			pong <- struct{}{}
		}
		close(done)
	}()
	started = time.Now()
	for i := 0; i < switches/2; i++ {
		ping <- struct{}{}
		<-pong
	}
	<-done
	perSwitch := time.Since(started).Seconds() / switches
	out, _ := json.Marshal(map[string]any{"rss_delta": after - before, "spawn": spawn, "switch": perSwitch})
	fmt.Println(string(out))
}
