package main

// The metrics contract of servers/telemetry.py, kept by client_golang (its process and Go
// runtime collectors included: the Go world's `process_*` and `go_*` where Python's servers
// have `process_*` and `python_gc_*`).
//
// The exposition is written here rather than by client_golang's expfmt, in the text format
// prometheus_client writes: numbers as its floatToGoString formats them. expfmt writes a
// bucket bound of 1 s as le="1" where the Python servers write le="1.0", and label values are
// strings to whoever reads them (a PromQL matcher, `stackbench run`'s sampler, the tests).

import (
	"bytes"
	"math"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const (
	// The type prometheus_client's own handler (choose_encoder, unless the Accept asks for
	// more) and client_golang give this text. The Python servers send CONTENT_TYPE_LATEST
	// with the same bytes: version=1.0.0 in prometheus_client 0.26 (0.21 said 0.0.4), which
	// expfmt's decoder here (prometheus/common) takes for an unknown format. Prometheus
	// reads either.
	metricsContentType = "text/plain; version=0.0.4; charset=utf-8"
	clientClosed       = 499
	lagInterval        = 10 * time.Millisecond
)

// latencyBuckets: telemetry.LATENCY_BUCKETS (the R20 series from 1 ms to 90 s, with 0.5 ms,
// 60 s, 100 s and 120 s).
var r20 = []float64{1.0, 1.12, 1.25, 1.4, 1.6, 1.8, 2.0, 2.24, 2.5, 2.8,
	3.15, 3.55, 4.0, 4.5, 5.0, 5.6, 6.3, 7.1, 8.0, 9.0}

var latencyBuckets = func() []float64 {
	b := []float64{0.0005, 60.0, 100.0, 120.0}
	for e := -3; e <= 1; e++ {
		for _, m := range r20 {
			b = append(b, math.Round(m*math.Pow(10, float64(e))*1e6)/1e6)
		}
	}
	sort.Float64s(b)
	return b
}()

// lagBuckets: telemetry.LAG_BUCKETS (the R20 series from 0.1 ms to 90 s, and 100 s).
var lagBuckets = func() []float64 {
	b := []float64{100.0}
	for e := -4; e <= 1; e++ {
		for _, m := range r20 {
			b = append(b, math.Round(m*math.Pow(10, float64(e))*1e7)/1e7)
		}
	}
	sort.Float64s(b)
	return b
}()

var statusLabels = func() (s [600]string) {
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return
}()

// observerKey: the labels of one child of the request histogram.
type observerKey struct {
	route, method string
	status        int
}

type telemetry struct {
	enabled  bool
	registry *prometheus.Registry
	duration *prometheus.HistogramVec
	active   prometheus.Gauge
	lag      prometheus.Histogram
	exact    *lagHistogram // every lag tick, for /lag (hdr.go)
	accepted prometheus.Counter
	rejected prometheus.Counter

	// The request histogram's children by their labels: WithLabelValues would validate and
	// hash the three labels and take the vector's lock on every request.
	observersMu sync.Mutex
	observers   map[observerKey]prometheus.Observer
}

func newTelemetry(enabled bool, opts *options, openConnections func() int) *telemetry {
	t := &telemetry{enabled: enabled, observers: map[observerKey]prometheus.Observer{}}
	if !enabled {
		return t
	}
	t.registry = prometheus.NewRegistry()
	t.exact = &lagHistogram{}
	t.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "http_server_request_duration_seconds",
		Help:    "Time from a request's arrival to the last byte of its response.",
		Buckets: latencyBuckets,
	}, []string{"route", "method", "status"})
	t.active = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "http_server_active_requests", Help: "Requests being handled right now.",
	})
	t.lag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "stackbench_scheduler_lag_seconds",
		Help:    "How late a periodic 10 ms timer fires in the runtime.",
		Buckets: lagBuckets,
	})
	t.accepted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "http_server_connections_total",
		Help: "Client connections accepted since the server started (shed ones included).",
	})
	t.rejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "http_server_rejected_connections_total",
		Help: "Connections shed because the server was at its connection limit.",
	})
	limit := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "http_server_connection_limit",
		Help: "Open connections allowed; past it new ones get a 503 and are closed.",
	})
	limit.Set(float64(opts.maxConnections))
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "stackbench_server_info",
		Help: "Which implementation, runtime and HTTP stack this server is.",
	}, []string{"impl", "runtime", "runtime_version", "http_stack", "http_client", "python_version"})
	goVersion := strings.TrimPrefix(runtime.Version(), "go")
	// No Python in this process: python_version is empty (the label is there, as everywhere).
	info.WithLabelValues(opts.impl, "go", goVersion, "net/http "+goVersion, "net/http "+goVersion, "").Set(1)
	t.registry.MustRegister(
		prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
		prometheus.NewGoCollector(),
		t.duration, t.active, t.lag, t.accepted, t.rejected, limit, info,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "http_server_open_connections", Help: "Client connections open right now.",
		}, func() float64 { return float64(openConnections()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stackbench_tasks",
			Help: "Live tasks (trio, asyncio), greenlets (gevent) or goroutines (Go) in the server's runtime.",
		}, func() float64 { return float64(runtime.NumGoroutine()) }),
	)
	return t
}

func (t *telemetry) connectionAccepted() {
	if t.enabled {
		t.accepted.Inc()
	}
}

func (t *telemetry) connectionRejected() {
	if t.enabled {
		t.rejected.Inc()
	}
}

func (t *telemetry) requestStarted() time.Time {
	if !t.enabled {
		return time.Time{}
	}
	t.active.Inc()
	return time.Now()
}

func (t *telemetry) requestFinished(route, method string, status int, started time.Time) {
	if !t.enabled {
		return
	}
	t.active.Dec()
	seconds := time.Since(started).Seconds()
	key := observerKey{route, methodLabel(method), status}
	t.observersMu.Lock()
	observer, ok := t.observers[key]
	if !ok {
		label := ""
		if status >= 0 && status < len(statusLabels) {
			label = statusLabels[status]
		} else {
			label = strconv.Itoa(status)
		}
		observer = t.duration.WithLabelValues(route, key.method, label)
		t.observers[key] = observer
	}
	t.observersMu.Unlock()
	observer.Observe(seconds)
}

func methodLabel(method string) string {
	if knownMethods[method] {
		return method
	}
	return "other"
}

// monitorLag: how late a 10 ms timer fires, for ever.
func (t *telemetry) monitorLag() {
	for {
		armed := time.Now()
		time.Sleep(lagInterval)
		lag := time.Since(armed) - lagInterval
		if lag < 0 {
			lag = 0
		}
		t.lag.Observe(lag.Seconds())
		t.exact.record(lag)
	}
}

func (t *telemetry) exposition() *response {
	if !t.enabled {
		return errorResponse(404, "metrics are switched off (--no-metrics)")
	}
	families, err := t.registry.Gather()
	var b bytes.Buffer
	for _, f := range families {
		writeFamily(&b, f)
	}
	if err != nil && len(families) == 0 {
		return errorResponse(500, "metrics: "+err.Error())
	}
	return &response{status: 200, body: b.Bytes(), contentType: metricsContentType}
}

func writeFamily(b *bytes.Buffer, f *dto.MetricFamily) {
	name := f.GetName()
	kind := map[dto.MetricType]string{
		dto.MetricType_COUNTER: "counter", dto.MetricType_GAUGE: "gauge",
		dto.MetricType_SUMMARY: "summary", dto.MetricType_HISTOGRAM: "histogram",
	}[f.GetType()]
	if kind == "" {
		kind = "untyped"
	}
	b.WriteString("# HELP " + name + " " + strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(f.GetHelp()) + "\n")
	b.WriteString("# TYPE " + name + " " + kind + "\n")
	for _, m := range f.GetMetric() {
		labels := m.GetLabel()
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			sample(b, name, labels, "", "", m.GetCounter().GetValue())
		case dto.MetricType_GAUGE:
			sample(b, name, labels, "", "", m.GetGauge().GetValue())
		case dto.MetricType_UNTYPED:
			sample(b, name, labels, "", "", m.GetUntyped().GetValue())
		case dto.MetricType_SUMMARY:
			s := m.GetSummary()
			for _, q := range s.GetQuantile() {
				sample(b, name, labels, "quantile", goString(q.GetQuantile()), q.GetValue())
			}
			sample(b, name+"_sum", labels, "", "", s.GetSampleSum())
			sample(b, name+"_count", labels, "", "", float64(s.GetSampleCount()))
		case dto.MetricType_HISTOGRAM:
			h := m.GetHistogram()
			for _, bucket := range h.GetBucket() {
				sample(b, name+"_bucket", labels, "le", goString(bucket.GetUpperBound()), float64(bucket.GetCumulativeCount()))
			}
			sample(b, name+"_bucket", labels, "le", "+Inf", float64(h.GetSampleCount()))
			sample(b, name+"_count", labels, "", "", float64(h.GetSampleCount()))
			sample(b, name+"_sum", labels, "", "", h.GetSampleSum())
		}
	}
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

func sample(b *bytes.Buffer, name string, labels []*dto.LabelPair, extraName, extraValue string, value float64) {
	b.WriteString(name)
	if len(labels) > 0 || extraName != "" {
		b.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(l.GetName() + `="` + labelEscaper.Replace(l.GetValue()) + `"`)
		}
		if extraName != "" {
			if len(labels) > 0 {
				b.WriteByte(',')
			}
			b.WriteString(extraName + `="` + extraValue + `"`)
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(goString(value))
	b.WriteByte('\n')
}

// goString: a number as prometheus_client's floatToGoString writes it (Python's repr, with
// an exponent from 1e7 up).
func goString(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	s := pyRepr(v)
	dot := strings.IndexByte(s, '.')
	if v > 0 && dot > 6 {
		mantissa := strings.TrimRight(s[:1]+"."+s[1:dot]+s[dot+1:], "0.")
		return mantissa + "e+0" + strconv.Itoa(dot-1)
	}
	return s
}

// pyRepr: Python's repr of a float (the shortest digits that read back the same; positional
// from 1e-4 to below 1e16, with at least one decimal).
func pyRepr(v float64) string {
	if v == 0 {
		if math.Signbit(v) {
			return "-0.0"
		}
		return "0.0"
	}
	sign := ""
	if v < 0 {
		sign, v = "-", -v
	}
	e := strconv.FormatFloat(v, 'e', -1, 64) // d.ddde±XX
	mantissa, exp, _ := strings.Cut(e, "e")
	digits := strings.Replace(mantissa, ".", "", 1)
	x, _ := strconv.Atoi(exp)
	if x < -4 || x >= 16 {
		out := digits[:1]
		if len(digits) > 1 {
			out += "." + digits[1:]
		}
		expSign := "+"
		if x < 0 {
			expSign, x = "-", -x
		}
		xs := strconv.Itoa(x)
		if len(xs) < 2 {
			xs = "0" + xs
		}
		return sign + out + "e" + expSign + xs
	}
	point := x + 1 // digits before the decimal point
	switch {
	case point <= 0:
		return sign + "0." + strings.Repeat("0", -point) + digits
	case point >= len(digits):
		return sign + digits + strings.Repeat("0", point-len(digits)) + ".0"
	}
	return sign + digits[:point] + "." + digits[point:]
}
