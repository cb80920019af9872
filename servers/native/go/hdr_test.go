package main

// The /lag histogram's layout and encoding (hdr.go). tests/test_lag.py is the judge (it decodes
// what --encode-lag writes with Python's hdrh); this checks the port on its own:
// GO111MODULE=off GOPATH=/usr/share/gocode go test in this directory.

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

func TestHdrIndexIsHdrHistograms(t *testing.T) {
	// Indices as hdrh's get_counts_array_index gives them in loadtest.histograms' setting.
	for us, want := range map[int64]int{
		1: 1, 2: 2, 1023: 1023, 1024: 1024, 2047: 2047, 2048: 2048, 2049: 2048,
		4095: 3071, 4096: 3072, 65535: 7167, 1000000: 11169, 3600000000: 23220,
		0: 1, -5: 1, 9000000000: 23220, // clamped to the setting
	} {
		if got := hdrIndex(us); got != want {
			t.Errorf("hdrIndex(%d) = %d, want %d", us, got, want)
		}
	}
	if hdrCountsLen != 23552 {
		t.Errorf("counts length %d, want hdrh's 23552", hdrCountsLen)
	}
}

// decode: the V2 compressed encoding back to counts (the header fields checked on the way).
func decode(t *testing.T, encoded string) []uint64 {
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(raw) != hdrCompressedCookie || int(binary.BigEndian.Uint32(raw[4:])) != len(raw)-8 {
		t.Fatalf("bad outer header % x", raw[:8])
	}
	z, err := zlib.NewReader(bytes.NewReader(raw[8:]))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(payload) != hdrEncodingCookie || int(binary.BigEndian.Uint32(payload[4:])) != len(payload)-40 ||
		binary.BigEndian.Uint32(payload[12:]) != 3 || binary.BigEndian.Uint64(payload[16:]) != 1 ||
		binary.BigEndian.Uint64(payload[24:]) != 3600000000 || binary.BigEndian.Uint64(payload[32:]) != 0x3ff0000000000000 {
		t.Fatalf("bad payload header % x", payload[:40])
	}
	var counts []uint64
	for rest := payload[40:]; len(rest) > 0; {
		u, n := binary.Uvarint(rest)
		rest = rest[n:]
		v := int64(u>>1) ^ -int64(u&1)
		if v < 0 {
			counts = append(counts, make([]uint64, -v)...)
		} else {
			counts = append(counts, uint64(v))
		}
	}
	return counts
}

func TestLagBodyRoundTrips(t *testing.T) {
	var h lagHistogram
	values := []int64{1, 2, 2, 2047, 2048, 2049, 5000, 35000, 35010, 3600000000}
	for _, us := range values {
		h.record(time.Duration(us) * time.Microsecond)
	}
	for i := 0; i < 300; i++ {
		h.record(150 * time.Microsecond) // a count needing two varint bytes
	}
	var body struct {
		Unit       string `json:"unit"`
		IntervalMS int    `json:"interval_ms"`
		Count      int    `json:"count"`
		Histogram  string `json:"histogram"`
	}
	raw := h.body()
	if !strings.HasPrefix(string(raw), `{"unit":"us","interval_ms":10,"count":310,"histogram":"`) {
		t.Fatalf("body %s", raw)
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatal(err)
	}
	counts := decode(t, body.Histogram)
	want := make([]uint64, hdrIndex(3600000000)+1)
	for _, us := range values {
		want[hdrIndex(us)]++
	}
	want[hdrIndex(150)] += 300
	if len(counts) != len(want) {
		t.Fatalf("%d counts decoded, want %d", len(counts), len(want))
	}
	for i := range want {
		if counts[i] != want[i] {
			t.Errorf("count %d = %d, want %d", i, counts[i], want[i])
		}
	}
	var empty lagHistogram
	if counts := decode(t, func() string {
		json.Unmarshal(empty.body(), &body)
		return body.Histogram
	}()); len(counts) != 0 || body.Count != 0 {
		t.Errorf("empty histogram: %d counts, count %d", len(counts), body.Count)
	}
}

func TestLagBucketsAreR20(t *testing.T) {
	if len(lagBuckets) != 121 || lagBuckets[0] != 0.0001 || lagBuckets[120] != 100 {
		t.Fatalf("lag buckets %v", lagBuckets)
	}
	for i := 1; i < len(lagBuckets); i++ {
		if r := lagBuckets[i] / lagBuckets[i-1]; r <= 1.1 || r >= 1.143 {
			t.Errorf("bucket %v after %v", lagBuckets[i], lagBuckets[i-1])
		}
	}
}
