//! The exact scheduler lag (GET /lag): every tick of the lag monitor in an HdrHistogram of
//! loadtest/histograms.py's setting (microseconds, 1 to 3,600,000,000, 3 significant digits),
//! answered in HdrHistogram's V2 compressed encoding, which Python's hdrh decodes.
//!
//! Written by hand because Debian packages no HdrHistogram crate with the V2 encoding (nor a
//! Go one), and the build is offline against Debian's crates; zlib is flate2's (Debian's
//! librust-flate2-dev, on its pure-Rust miniz_oxide backend, which builds offline). The layout
//! and the encoding follow HdrHistogram's (Java, and hdrh's codec.py): tests/test_lag.py
//! decodes what this writes with hdrh and compares it count by count.
//!
//! Recording is one relaxed atomic add into a fixed counts array: the monitor task records, a
//! handler (on another worker with --cores N) reads, with no lock; a reading's count is the sum
//! of the counts it copied.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flate2::write::ZlibEncoder;
use flate2::Compression;

const LOWEST: u64 = 1;
const HIGHEST: u64 = 3_600_000_000;
const DIGITS: u32 = 3;
/// 2 * 10^3 values at unit resolution need 2,048 sub-buckets: half a bucket is 1,024.
const HALF_MAGNITUDE: u32 = 10;
const SUB_MASK: u64 = (1 << (HALF_MAGNITUDE + 1)) - 1; // 2047
const BUCKETS: usize = 22; // until 2048 << 21 exceeds the highest value
pub const COUNTS_LEN: usize = (BUCKETS + 1) << HALF_MAGNITUDE;
/// V2 cookies with the word-size nibble (0x10) that HdrHistogram and hdrh write.
const ENCODING_COOKIE: u32 = 0x1c84_9303 | 0x10;
const COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;

/// HdrHistogram's counts index of a value in microseconds (clamped to the setting): the bucket
/// is how many doublings above 2,047 the value is, the sub-bucket its top 11 bits.
pub fn index(microseconds: u64) -> usize {
    let v = microseconds.clamp(LOWEST, HIGHEST);
    let bucket = 64 - (v | SUB_MASK).leading_zeros() - (HALF_MAGNITUDE + 1);
    ((bucket as usize) << HALF_MAGNITUDE) + (v >> bucket) as usize
}

pub struct LagHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram { counts: (0..COUNTS_LEN).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LagHistogram {
    pub fn record(&self, lag: Duration) {
        // To the nearest microsecond, as servers/lag.py rounds.
        let microseconds = (lag.as_nanos() + 500) / 1000;
        let microseconds = u64::try_from(microseconds).unwrap_or(u64::MAX);
        self.counts[index(microseconds)].fetch_add(1, Ordering::Relaxed);
    }

    /// The /lag answer: `{"unit":"us","interval_ms":10,"count":N,"histogram":"<base64>"}`.
    pub fn body(&self, interval_ms: u64) -> String {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let top = counts.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        let total: u64 = counts.iter().sum();
        format!(
            "{{\"unit\":\"us\",\"interval_ms\":{},\"count\":{},\"histogram\":\"{}\"}}",
            interval_ms,
            total,
            encode(&counts[..top])
        )
    }
}

/// Counts (up to the last one recorded) in the V2 compressed encoding, base64: the compressed
/// cookie, the length of what follows, then zlib of the payload: its cookie, the length of its
/// counts, the normalizing index offset (0), the significant digits, the lowest and highest
/// values, the integer-to-double ratio (1.0), then the counts as ZigZag LEB128 varints, a run
/// of zeros as one negative count (a single zero as 0), as HdrHistogram writes them.
pub fn encode(counts: &[u64]) -> String {
    let mut varints = Vec::new();
    let mut i = 0;
    while i < counts.len() {
        if counts[i] != 0 {
            zigzag(&mut varints, counts[i] as i64);
            i += 1;
            continue;
        }
        let zeros = counts[i..].iter().take_while(|&&c| c == 0).count();
        zigzag(&mut varints, if zeros > 1 { -(zeros as i64) } else { 0 });
        i += zeros;
    }
    let mut payload = Vec::with_capacity(40 + varints.len());
    payload.extend_from_slice(&ENCODING_COOKIE.to_be_bytes());
    payload.extend_from_slice(&(varints.len() as u32).to_be_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes());
    payload.extend_from_slice(&DIGITS.to_be_bytes());
    payload.extend_from_slice(&LOWEST.to_be_bytes());
    payload.extend_from_slice(&HIGHEST.to_be_bytes());
    payload.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
    payload.extend_from_slice(&varints);
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(&payload).expect("writing to a Vec does not fail");
    let compressed = z.finish().expect("writing to a Vec does not fail");
    let mut out = Vec::with_capacity(8 + compressed.len());
    out.extend_from_slice(&COMPRESSED_COOKIE.to_be_bytes());
    out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    out.extend_from_slice(&compressed);
    base64(&out)
}

/// LEB128 of the ZigZag of v (counts here stay far below the 2^56 from which HdrHistogram's
/// 9-byte form would differ).
fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

/// Standard base64 with padding (no base64 crate among the Debian packages the build uses).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity((bytes.len() + 2) / 3 * 4);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// --encode-lag, for tests/test_lag.py: microseconds from stdin, one a line, recorded as lag
/// ticks; prints the /lag body they make.
pub fn encode_stdin(interval_ms: u64) -> i32 {
    let histogram = LagHistogram::default();
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("stackbench: error: --encode-lag: {}", e);
                return 2;
            }
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match text.parse::<u64>() {
            Ok(us) => histogram.record(Duration::from_micros(us)),
            Err(e) => {
                eprintln!("stackbench: error: --encode-lag: {:?}: {}", text, e);
                return 2;
            }
        }
    }
    println!("{}", histogram.body(interval_ms));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_hdrhistograms() {
        // Indices as hdrh's get_counts_array_index gives them in loadtest.histograms' setting.
        for (us, want) in [
            (1, 1), (2, 2), (1023, 1023), (1024, 1024), (2047, 2047), (2048, 2048), (2049, 2048),
            (4095, 3071), (4096, 3072), (65535, 7167), (1_000_000, 11169),
            (3_600_000_000, 23220), (0, 1), (9_000_000_000, 23220),
        ] {
            assert_eq!(index(us), want, "index({})", us);
        }
        assert_eq!(COUNTS_LEN, 23552);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
