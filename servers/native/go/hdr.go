package main

// The exact scheduler lag (GET /lag): every tick of the lag monitor in an HdrHistogram of
// loadtest/histograms.py's setting (microseconds, 1 to 3,600,000,000, 3 significant digits),
// answered in HdrHistogram's V2 compressed encoding, which Python's hdrh decodes.
//
// Written by hand because Debian packages no HdrHistogram for Go with the V2 encoding (nor for
// Rust), and the build is offline against Debian's packages; compress/zlib is the standard
// library's. The layout and the encoding follow HdrHistogram's (Java, and hdrh's codec.py):
// tests/test_lag.py decodes what this writes with hdrh and compares it count by count.
//
// Recording is one atomic add into a fixed counts array (the monitor goroutine records, a
// handler reads: no lock, and a reading's count is the sum of the counts it copied).

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"io"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const (
	hdrLowest  = 1
	hdrHighest = 3_600_000_000
	hdrDigits  = 3
	// 2 * 10^3 values at unit resolution need 2,048 sub-buckets: half a bucket is 1,024.
	hdrHalfMagnitude = 10
	hdrSubMask       = 1<<(hdrHalfMagnitude+1) - 1 // 2047
	hdrBuckets       = 22                          // until 2048 << 21 exceeds the highest value
	hdrCountsLen     = (hdrBuckets + 1) << hdrHalfMagnitude
	// V2 cookies with the word-size nibble (0x10) that HdrHistogram and hdrh write.
	hdrEncodingCookie   = 0x1c849303 | 0x10
	hdrCompressedCookie = 0x1c849304 | 0x10
)

type lagHistogram struct {
	counts [hdrCountsLen]uint64
}

// hdrIndex: HdrHistogram's counts index of a value in microseconds (clamped to the setting):
// the bucket is how many doublings above 2,047 the value is, the sub-bucket its top 11 bits.
func hdrIndex(us int64) int {
	if us < hdrLowest {
		us = hdrLowest
	} else if us > hdrHighest {
		us = hdrHighest
	}
	v := uint64(us)
	bucket := bits.Len64(v|hdrSubMask) - (hdrHalfMagnitude + 1)
	return bucket<<hdrHalfMagnitude + int(v>>uint(bucket))
}

func (t *telemetry) lagResponse() *response {
	if !t.enabled {
		return errorResponse(404, "metrics are switched off (--no-metrics)")
	}
	return &response{status: 200, body: t.exact.body(), contentType: contentJSON}
}

// encodeLag: --encode-lag, for tests/test_lag.py: microseconds from stdin, one a line, recorded
// as lag ticks; prints the /lag body they make.
func encodeLag(in io.Reader, out io.Writer) error {
	var h lagHistogram
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		text := strings.TrimSpace(lines.Text())
		if text == "" {
			continue
		}
		us, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return err
		}
		h.record(time.Duration(us) * time.Microsecond)
	}
	if err := lines.Err(); err != nil {
		return err
	}
	_, err := out.Write(append(h.body(), '\n'))
	return err
}

func (h *lagHistogram) record(lag time.Duration) {
	// To the nearest microsecond, as servers/lag.py rounds.
	atomic.AddUint64(&h.counts[hdrIndex((lag.Nanoseconds()+500)/1000)], 1)
}

// body: the /lag answer, {"unit":"us","interval_ms":10,"count":N,"histogram":"<base64>"}.
func (h *lagHistogram) body() []byte {
	counts := make([]uint64, hdrCountsLen)
	var total uint64
	top := -1
	for i := range h.counts {
		if c := atomic.LoadUint64(&h.counts[i]); c != 0 {
			counts[i], total, top = c, total+c, i
		}
	}
	encoded := hdrEncode(counts[:top+1])
	return []byte(`{"unit":"us","interval_ms":` + strconv.Itoa(int(lagInterval/time.Millisecond)) +
		`,"count":` + strconv.FormatUint(total, 10) + `,"histogram":"` + encoded + `"}`)
}

// hdrEncode: counts (up to the last one recorded) in the V2 compressed encoding, base64: the
// compressed cookie, the length of what follows, then zlib of the payload: its cookie, the
// length of its counts, the normalizing index offset (0), the significant digits, the lowest
// and highest values, the integer-to-double ratio (1.0), then the counts as ZigZag LEB128
// varints, a run of zeros as one negative count (a single zero as 0), as HdrHistogram writes.
func hdrEncode(counts []uint64) string {
	var varints []byte
	for i := 0; i < len(counts); i++ {
		if counts[i] != 0 {
			varints = appendZigZag(varints, int64(counts[i]))
			continue
		}
		zeros := 1
		for i+zeros < len(counts) && counts[i+zeros] == 0 {
			zeros++
		}
		i += zeros - 1
		if zeros > 1 {
			varints = appendZigZag(varints, -int64(zeros))
		} else {
			varints = appendZigZag(varints, 0)
		}
	}
	payload := make([]byte, 40, 40+len(varints))
	binary.BigEndian.PutUint32(payload[0:], hdrEncodingCookie)
	binary.BigEndian.PutUint32(payload[4:], uint32(len(varints)))
	binary.BigEndian.PutUint32(payload[8:], 0)
	binary.BigEndian.PutUint32(payload[12:], hdrDigits)
	binary.BigEndian.PutUint64(payload[16:], hdrLowest)
	binary.BigEndian.PutUint64(payload[24:], hdrHighest)
	binary.BigEndian.PutUint64(payload[32:], math.Float64bits(1.0))
	payload = append(payload, varints...)
	var compressed bytes.Buffer
	z := zlib.NewWriter(&compressed)
	z.Write(payload) // a bytes.Buffer does not fail
	z.Close()
	out := make([]byte, 8, 8+compressed.Len())
	binary.BigEndian.PutUint32(out[0:], hdrCompressedCookie)
	binary.BigEndian.PutUint32(out[4:], uint32(compressed.Len()))
	out = append(out, compressed.Bytes()...)
	return base64.StdEncoding.EncodeToString(out)
}

// appendZigZag: LEB128 of the ZigZag of v (counts here stay far below the 2^56 from which
// HdrHistogram's 9-byte form would differ).
func appendZigZag(b []byte, v int64) []byte {
	u := uint64(v<<1) ^ uint64(v>>63)
	for u >= 0x80 {
		b = append(b, byte(u)|0x80)
		u >>= 7
	}
	return append(b, byte(u))
}
