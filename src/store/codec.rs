//! The entry codec: how a [`CachedEntry`] is written into a shared tier.
//!
//! ```text
//! [format version u8][flags u8][meta length u32 LE][bincode(meta)][body, brotli when flagged]
//! ```
//!
//! A typed value ([`TieredCache::set_value`](crate::TieredCache::set_value)) is the body of an
//! entry, so it goes through the same layout, compression and bounds:
//!
//! ```text
//! [value format u8][type fingerprint u64 LE][bincode(value)]
//! ```
//!
//! bincode is confined to this module (it carries advisory RUSTSEC-2025-0141, unmaintained; its
//! format is frozen): swapping it for another format touches this file and bumps
//! [`FORMAT_VERSION`]. Decoding treats its input as hostile: every length is checked before it is
//! used, metadata decoding is bounded, decompression stops one byte past the size the metadata
//! claims, and any failure is a [`DecodeError`], never a panic.

use std::io::{Read, Write};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::entry::{CachedEntry, EntryMeta, Version};
use crate::config::CacheConfig;

/// Bumped on any change to the layout or the metadata fields.
pub(crate) const FORMAT_VERSION: u8 = 4;
const FLAG_BROTLI: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_BROTLI;

/// Bodies from this size on are compressed, and compressed bodies decompressed, on Tokio's
/// blocking pool: brotli spends milliseconds on them that would stall every other request on a
/// runtime thread. Below it the hand-off would cost more than the work.
const BLOCKING_SIZE: usize = 128 << 10;
const HEADER_LEN: usize = 6;
/// Upper bound on encoded metadata (headers, trailers, tags).
const META_LIMIT: usize = 1 << 20;
const BROTLI_WINDOW: u32 = 22;
const BROTLI_BUFFER: usize = 4096;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<META_LIMIT>()
}

/// Why bytes under a cache key are not an entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the fixed header or than the lengths it announces.
    #[error("truncated entry")]
    Truncated,
    /// Written by another format version (or not by this crate at all).
    #[error("unsupported entry format version {0}")]
    UnsupportedVersion(u8),
    /// Flags this version does not know.
    #[error("unknown entry flags {0:#010b}")]
    UnknownFlags(u8),
    /// The metadata does not decode.
    #[error("invalid entry metadata: {0}")]
    Meta(String),
    /// The body is not the size the metadata says, or exceeds `http.max_entry_size`.
    #[error("entry body has {actual} bytes, expected {expected} (limit {limit})")]
    BodyLength {
        /// Size announced by the metadata.
        expected: u64,
        /// Size found (for compressed bodies: decompressed, stopped one past the limit).
        actual: u64,
        /// `http.max_entry_size`.
        limit: u64,
    },
    /// The compressed body does not decompress.
    #[error("entry body does not decompress: {0}")]
    Decompress(String),
    /// The stored header fields frame another body than the stored one: a `Content-Length` of
    /// another length, or a `Transfer-Encoding` (served, it would split the response).
    #[error("entry header fields declare another body than its {actual} bytes")]
    Framing {
        /// The size of the stored body.
        actual: u64,
    },
    /// More tags than `tags.max_per_entry`: not written under this configuration, and each would
    /// cost every hit a stamp check.
    #[error("entry has {count} tags, more than tags.max_per_entry ({limit})")]
    TooManyTags {
        /// Tags found.
        count: u64,
        /// `tags.max_per_entry`.
        limit: u64,
    },
}

/// Why an entry cannot be encoded.
#[derive(Debug, thiserror::Error)]
#[error("entry metadata cannot be encoded: {0}")]
pub struct EncodeError(String);

/// Metadata as written: plain types only, so the encoding does not depend on `http`'s.
#[derive(Serialize, Deserialize)]
struct WireMeta {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    trailers: Vec<(String, Vec<u8>)>,
    stored_at_ms: u64,
    /// The shared-tier generation the entry was filled under (format 4 on).
    generation: u64,
    ttl_ms: u64,
    stale_ttl_ms: u64,
    tags: Vec<String>,
    expired_at_ms: Option<u64>,
    load_ms: u64,
    body_len: u64,
}

/// Key, method, URI and headers of a queued write-behind job (its body travels separately).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // durable write-behind only
#[derive(Serialize, Deserialize)]
pub(crate) struct JobMeta {
    pub(crate) key: String,
    pub(crate) method: String,
    pub(crate) uri: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// Bumped on any change to [`JobMeta`] or its layout.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // durable write-behind only
pub(crate) const JOB_FORMAT: u8 = 1;
/// Upper bound on an encoded [`JobMeta`].
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // durable write-behind only
const JOB_META_LIMIT: usize = 16 << 20;

#[cfg_attr(not(feature = "redis"), allow(dead_code))] // durable write-behind only
fn job_bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<JOB_META_LIMIT>()
}

/// `[JOB_FORMAT][bincode(meta)]`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // durable write-behind only
pub(crate) fn encode_job_meta(meta: &JobMeta) -> Result<Vec<u8>, EncodeError> {
    let encoded = bincode::serde::encode_to_vec(meta, job_bincode_config())
        .map_err(|err| EncodeError(err.to_string()))?;
    let mut field = Vec::with_capacity(1 + encoded.len());
    field.push(JOB_FORMAT);
    field.extend_from_slice(&encoded);
    Ok(field)
}

/// The inverse of [`encode_job_meta`]; hostile input is an error, never a panic or an
/// unbounded allocation.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // durable write-behind only
pub(crate) fn decode_job_meta(field: &[u8]) -> Result<JobMeta, DecodeError> {
    let (&format, encoded) = field.split_first().ok_or(DecodeError::Truncated)?;
    if format != JOB_FORMAT {
        return Err(DecodeError::UnsupportedVersion(format));
    }
    let (meta, read): (JobMeta, usize) =
        bincode::serde::decode_from_slice(encoded, job_bincode_config())
            .map_err(|err| DecodeError::Meta(err.to_string()))?;
    if read != encoded.len() {
        return Err(DecodeError::Meta(format!(
            "{} trailing bytes",
            encoded.len() - read
        )));
    }
    Ok(meta)
}

/// Bumped on any change to the layout of a typed value or to its bincode configuration.
pub(crate) const VALUE_FORMAT: u8 = 1;
const VALUE_HEADER_LEN: usize = 9;

/// Why an entry's body is not a value of the type asked for: to the caller, a miss.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ValueMismatch {
    /// Bytes stored through the byte API, or a value of another value format.
    #[error("not a typed value of this format")]
    NotAValue,
    /// A value of another type (or of this type under another name, after a rename or a move).
    #[error("a value of another type")]
    OtherType,
    /// The type name matches but the bytes do not decode as it, or not exactly: its fields
    /// changed, or the bytes were cut off or altered.
    #[error("does not decode: {0}")]
    Malformed(String),
}

/// `value` as the body of an entry; the error is serde's or bincode's reason.
pub(crate) fn encode_value<V: Serialize>(value: &V) -> Result<Bytes, String> {
    let mut body = Vec::with_capacity(VALUE_HEADER_LEN + 64);
    body.push(VALUE_FORMAT);
    body.extend_from_slice(&type_fingerprint::<V>().to_le_bytes());
    // Written after the header into the same buffer: the body is never copied.
    bincode::serde::encode_into_std_write(value, &mut body, bincode::config::standard())
        .map_err(|err| err.to_string())?;
    Ok(Bytes::from(body))
}

/// The value a body written by [`encode_value`] for `V` holds, decoded from the body in place.
/// Hostile input is a [`ValueMismatch`], never a panic, and allocates a bounded amount.
pub(crate) fn decode_value<V: DeserializeOwned>(body: &[u8]) -> Result<V, ValueMismatch> {
    let (header, encoded) = body
        .split_at_checked(VALUE_HEADER_LEN)
        .ok_or(ValueMismatch::NotAValue)?;
    let (&format, fingerprint) = header.split_first().ok_or(ValueMismatch::NotAValue)?;
    if format != VALUE_FORMAT {
        return Err(ValueMismatch::NotAValue);
    }
    if fingerprint != type_fingerprint::<V>().to_le_bytes() {
        return Err(ValueMismatch::OtherType);
    }
    // bincode counts what it reads and what it is about to allocate (a string's length, before
    // it allocates it) against a limit fixed at compile time. Through serde it claims at most 16
    // bytes per byte it reads (a one-byte varint u128), so the smallest tier of at least 16 times
    // the input admits every genuine value, while a forged length in a small body cannot
    // allocate more than its tier. Past 64 MiB a value may claim more than the last tier and is
    // refused (which `get_or_set_value` reports before storing it).
    let decoded = match encoded.len() {
        len if len <= 64 << 10 => decode_bounded::<V, { 1 << 20 }>(encoded),
        len if len <= 4 << 20 => decode_bounded::<V, { 64 << 20 }>(encoded),
        _ => decode_bounded::<V, { 1 << 30 }>(encoded),
    };
    match decoded {
        Ok((value, read)) if read == encoded.len() => Ok(value),
        Ok((_, read)) => Err(ValueMismatch::Malformed(format!(
            "{} trailing bytes",
            encoded.len() - read
        ))),
        Err(err) => Err(ValueMismatch::Malformed(err.to_string())),
    }
}

fn decode_bounded<V: DeserializeOwned, const LIMIT: usize>(
    encoded: &[u8],
) -> Result<(V, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(encoded, bincode::config::standard().with_limit::<LIMIT>())
}

/// FNV-1a of `V`'s type name: the same in every process and build of a program (unlike
/// `TypeId` or std's `DefaultHasher`), so instances of one deploy agree, and a renamed or moved
/// type (or a compiler that spells the name differently) reads as another type, a miss.
fn type_fingerprint<V>() -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    std::any::type_name::<V>()
        .bytes()
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

/// Encoder/decoder with the configured compression and size limit.
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    compress: bool,
    min_compress_size: u64,
    /// The compressed body is kept only if at most this fraction of the plain one.
    max_compressed_share: f64,
    quality: u32,
    max_body: u64,
    max_tags: u32,
}

impl Codec {
    pub(crate) fn new(config: &CacheConfig) -> Self {
        Self {
            compress: config.compression.enabled,
            min_compress_size: config.compression.min_size,
            max_compressed_share: 1.0 - config.compression.min_savings,
            quality: config.compression.quality,
            max_body: config.http.max_entry_size,
            max_tags: config.tags.max_per_entry,
        }
    }

    pub(crate) fn encode(&self, entry: &CachedEntry) -> Result<Vec<u8>, EncodeError> {
        let meta = entry.meta();
        let body = entry.body();
        let wire = WireMeta {
            status: meta.status.as_u16(),
            headers: fields_to_wire(&meta.headers),
            trailers: fields_to_wire(&meta.trailers),
            stored_at_ms: meta.stored_at_ms,
            generation: entry.version().shared,
            ttl_ms: meta.ttl_ms,
            stale_ttl_ms: meta.stale_ttl_ms,
            tags: meta.tags.clone(),
            expired_at_ms: meta.expired_at_ms,
            load_ms: meta.load_ms,
            body_len: body.len() as u64,
        };
        let meta_bytes = bincode::serde::encode_to_vec(&wire, bincode_config())
            .map_err(|err| EncodeError(err.to_string()))?;
        let meta_len =
            u32::try_from(meta_bytes.len()).map_err(|err| EncodeError(err.to_string()))?;
        let compressed = if self.tries_compression(&meta.headers, body.len()) {
            self.compress_if_worth_it(body)
        } else {
            None
        };
        let stored_body = compressed.as_deref().unwrap_or(body);
        let flags = if compressed.is_some() { FLAG_BROTLI } else { 0 };

        let mut out = Vec::with_capacity(HEADER_LEN + meta_bytes.len() + stored_body.len());
        out.push(FORMAT_VERSION);
        out.push(flags);
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(&meta_bytes);
        out.extend_from_slice(stored_body);
        Ok(out)
    }

    /// Whether a body of `len` bytes under `headers` is given to brotli: compression is on,
    /// the body is big enough and not compressed already.
    fn tries_compression(&self, headers: &HeaderMap, len: usize) -> bool {
        self.compress && len as u64 >= self.min_compress_size && !already_compressed(headers)
    }

    /// Brotli output, when it saves at least `compression.min_savings`.
    fn compress_if_worth_it(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut writer = brotli::CompressorWriter::new(
            Vec::with_capacity(body.len() / 2),
            BROTLI_BUFFER,
            self.quality,
            BROTLI_WINDOW,
        );
        // Writing into a Vec cannot fail.
        writer.write_all(body).ok()?;
        let compressed = writer.into_inner();
        let worth_it = compressed.len() as f64 <= body.len() as f64 * self.max_compressed_share;
        worth_it.then_some(compressed)
    }

    pub(crate) fn decode(&self, bytes: &Bytes) -> Result<CachedEntry, DecodeError> {
        self.decode_for(bytes, Reading::Decoded)
    }

    /// The entry in `bytes`. With [`Reading::BrotliAccepted`], a body stored compressed whose
    /// response allows it (a complete `200` without `no-transform`) is not decompressed: the
    /// entry is that representation, `Content-Encoding: br` with its own length, `Vary:
    /// Accept-Encoding` and a weak `ETag` ([`CachedEntry::is_encoded`]).
    pub(crate) fn decode_for(
        &self,
        bytes: &Bytes,
        reading: Reading,
    ) -> Result<CachedEntry, DecodeError> {
        let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
        if header[0] != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(header[0]));
        }
        let flags = header[1];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let meta_len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if meta_len > META_LIMIT {
            return Err(DecodeError::Meta(format!(
                "{meta_len} bytes exceed the limit"
            )));
        }
        let meta_end = HEADER_LEN
            .checked_add(meta_len)
            .filter(|end| *end <= bytes.len())
            .ok_or(DecodeError::Truncated)?;
        let (wire, read): (WireMeta, usize) =
            bincode::serde::decode_from_slice(&bytes[HEADER_LEN..meta_end], bincode_config())
                .map_err(|err| DecodeError::Meta(err.to_string()))?;
        if read != meta_len {
            return Err(DecodeError::Meta(format!(
                "{} trailing bytes",
                meta_len - read
            )));
        }
        let stored_body = bytes.slice(meta_end..);
        let status = StatusCode::from_u16(wire.status)
            .map_err(|_| DecodeError::Meta(format!("invalid status {}", wire.status)))?;
        let len = usize::try_from(wire.body_len).map_err(|_| DecodeError::Truncated)?;
        let mut headers = framed(fields_from_wire(wire.headers)?, len)?;
        let compressed = flags & FLAG_BROTLI != 0;
        let encoded = compressed
            && reading == Reading::BrotliAccepted
            && wire.body_len <= self.max_body
            && brotli_transformable(status, &headers);
        let body = if encoded {
            brotli_representation(&mut headers, stored_body.len());
            stored_body
        } else if compressed {
            let body = self.decompress(&stored_body, wire.body_len)?;
            self.check_body_len(wire.body_len, body.len() as u64)?;
            body
        } else {
            self.check_body_len(wire.body_len, stored_body.len() as u64)?;
            stored_body
        };
        if wire.tags.len() > self.max_tags as usize {
            return Err(DecodeError::TooManyTags {
                count: wire.tags.len() as u64,
                limit: u64::from(self.max_tags),
            });
        }
        let meta = EntryMeta {
            status,
            headers,
            trailers: fields_from_wire(wire.trailers)?,
            stored_at_ms: wire.stored_at_ms,
            ttl_ms: wire.ttl_ms,
            stale_ttl_ms: wire.stale_ttl_ms,
            tags: wire.tags,
            expired_at_ms: wire.expired_at_ms,
            load_ms: wire.load_ms,
            encoded,
        };
        let version = Version {
            local: 0,
            shared: wire.generation,
        };
        Ok(CachedEntry::from_parts(meta, body).with_version(version))
    }

    /// Whether encoding `entry` compresses a body of [`BLOCKING_SIZE`] or more.
    pub(crate) fn is_slow_to_encode(&self, entry: &CachedEntry) -> bool {
        let len = entry.body().len();
        len >= BLOCKING_SIZE && self.tries_compression(entry.headers(), len)
    }

    /// Whether `bytes` hold a compressed body of [`BLOCKING_SIZE`] or more to decompress.
    pub(crate) fn is_slow_to_decode(bytes: &[u8], reading: Reading) -> bool {
        reading == Reading::Decoded
            && bytes.len() >= BLOCKING_SIZE
            && bytes.get(1).is_some_and(|flags| flags & FLAG_BROTLI != 0)
    }

    /// [`Codec::decode_for`] for a shared-tier read: `None` for an entry past its own lifetime,
    /// which a tier may still hold (expiry there is lazy, or coarser than milliseconds).
    pub(crate) fn decode_live(
        &self,
        bytes: &Bytes,
        reading: Reading,
    ) -> Result<Option<CachedEntry>, DecodeError> {
        let entry = self.decode_for(bytes, reading)?;
        let live = !entry
            .remaining_lifetime_at(std::time::SystemTime::now())
            .is_zero();
        Ok(live.then_some(entry))
    }

    fn decompress(&self, compressed: &[u8], expected: u64) -> Result<Bytes, DecodeError> {
        let limit = expected.min(self.max_body);
        let capacity = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut body = Vec::with_capacity(capacity);
        brotli::Decompressor::new(compressed, BROTLI_BUFFER)
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|err| DecodeError::Decompress(err.to_string()))?;
        Ok(Bytes::from(body))
    }

    fn check_body_len(&self, expected: u64, actual: u64) -> Result<(), DecodeError> {
        if expected == actual && actual <= self.max_body {
            Ok(())
        } else {
            Err(DecodeError::BodyLength {
                expected,
                actual,
                limit: self.max_body,
            })
        }
    }
}

/// What a shared-tier read is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// The entry as it was stored.
    Decoded,
    /// A client that accepts `br` asks: a body stored compressed may stay so.
    BrotliAccepted,
}

/// Whether a stored response may be sent as its brotli bytes: a complete `200` without
/// `no-transform` (RFC 9110 §7.7) and without a coding of its own.
fn brotli_transformable(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK
        && !headers.contains_key(http::header::CONTENT_ENCODING)
        && !headers.contains_key(http::header::CONTENT_RANGE)
        && !headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|directive| directive.trim().eq_ignore_ascii_case("no-transform"))
}

/// The fields of the brotli representation of a response whose fields are `headers`: its
/// coding and length, `Accept-Encoding` in `Vary`, and its `ETag` made weak (the bytes differ
/// from the identity representation's).
fn brotli_representation(headers: &mut HeaderMap, compressed_len: usize) {
    use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(compressed_len));
    let varies = headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|field| {
            let field = field.trim();
            field == "*" || field.eq_ignore_ascii_case("accept-encoding")
        });
    if !varies {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    let weak = headers.get(ETAG).and_then(|etag| {
        let etag = etag.as_bytes();
        (!etag.starts_with(b"W/")).then(|| [b"W/", etag].concat())
    });
    if let Some(weak) = weak.and_then(|weak| HeaderValue::from_bytes(&weak).ok()) {
        headers.insert(ETAG, weak);
    }
}

/// Whether a body is compressed already, so that brotli would spend its time for nothing: it
/// has a `Content-Encoding` (other than `identity`), or its `Content-Type` is a compressed
/// format (images other than SVG, audio, video, WOFF fonts, archives).
fn already_compressed(headers: &HeaderMap) -> bool {
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
    let Some(media_type) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
    else {
        return encoded;
    };
    let compressed_type = match media_type.split_once('/') {
        Some(("image", subtype)) => subtype != "svg+xml" && subtype != "bmp",
        Some(("audio" | "video", _)) => true,
        Some(("font", subtype)) => subtype.starts_with("woff"),
        Some(("application", subtype)) => matches!(
            subtype,
            "zip"
                | "gzip"
                | "x-gzip"
                | "zstd"
                | "x-bzip2"
                | "x-xz"
                | "x-7z-compressed"
                | "pdf"
                | "font-woff"
                | "vnd.rar"
                | "x-rar-compressed"
        ),
        _ => false,
    };
    encoded || compressed_type
}

fn fields_to_wire(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// `headers`, if they frame a body of `len` bytes ([`crate::framing::frames_stored_body`]).
fn framed(headers: HeaderMap, len: usize) -> Result<HeaderMap, DecodeError> {
    if crate::framing::frames_stored_body(&headers, len) {
        Ok(headers)
    } else {
        Err(DecodeError::Framing { actual: len as u64 })
    }
}

fn fields_from_wire(fields: Vec<(String, Vec<u8>)>) -> Result<HeaderMap, DecodeError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| DecodeError::Meta(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| DecodeError::Meta(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;

    fn codec() -> Codec {
        Codec::new(&CacheConfig::default())
    }

    fn entry(body: Vec<u8>) -> CachedEntry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("vary", HeaderValue::from_static("accept"));
        headers.append("vary", HeaderValue::from_static("accept-encoding"));
        CachedEntry::new(body, Duration::from_secs(60))
            .with_headers(headers)
            .with_tags(["a", "b"])
    }

    #[test]
    fn compressible_bodies_above_the_threshold_are_compressed() {
        let body = b"hello world ".repeat(1000);
        let bytes = codec().encode(&entry(body.clone())).unwrap();
        assert_eq!(bytes[1] & FLAG_BROTLI, FLAG_BROTLI);
        assert!(bytes.len() < body.len() / 10);
        assert_eq!(
            codec().decode(&Bytes::from(bytes)).unwrap().body(),
            &body[..]
        );
    }

    #[test]
    fn large_bodies_are_compressed_and_decompressed_off_the_runtime_threads() {
        let large = entry(b"hello world ".repeat(BLOCKING_SIZE / 12 + 1));
        let small = entry(b"hello world ".repeat(1000));
        assert!(codec().is_slow_to_encode(&large));
        assert!(!codec().is_slow_to_encode(&small));
        let plain = Codec::new(&CacheConfig::builder().compression(false).build().unwrap());
        assert!(!plain.is_slow_to_encode(&large), "nothing to compress");
        // Brotli shrinks the repeated text below the threshold: what counts is the stored size.
        let stored = codec().encode(&large).unwrap();
        assert!(!Codec::is_slow_to_decode(&stored, Reading::Decoded));
        let mut big_compressed = stored.clone();
        big_compressed.resize(BLOCKING_SIZE, 0);
        assert!(Codec::is_slow_to_decode(&big_compressed, Reading::Decoded));
        assert!(
            !Codec::is_slow_to_decode(&big_compressed, Reading::BrotliAccepted),
            "sent as it is: nothing to decompress"
        );
        let unflagged = plain.encode(&large).unwrap();
        assert!(
            !Codec::is_slow_to_decode(&unflagged, Reading::Decoded),
            "not compressed"
        );
    }

    #[test]
    fn bodies_compressed_already_are_not_compressed_again() {
        let body = b"hello world ".repeat(1000);
        let with = |name: &'static str, value: &'static str| {
            let entry = entry(body.clone());
            let mut headers = entry.headers().clone();
            headers.insert(name, HeaderValue::from_static(value));
            entry.with_headers(headers)
        };
        for (name, value) in [
            ("content-encoding", "gzip"),
            ("content-type", "image/png"),
            ("content-type", "Video/MP4; codecs=avc1"),
            ("content-type", "application/zip"),
            ("content-type", "font/woff2"),
        ] {
            let bytes = codec().encode(&with(name, value)).unwrap();
            assert_eq!(bytes[1], 0, "{name}: {value}");
        }
        for (name, value) in [
            ("content-encoding", "identity"),
            ("content-type", "image/svg+xml"),
            ("content-type", "application/json"),
        ] {
            let bytes = codec().encode(&with(name, value)).unwrap();
            assert_eq!(bytes[1], FLAG_BROTLI, "{name}: {value}");
        }
    }

    #[test]
    fn a_compressed_body_is_read_as_it_is_stored_for_a_client_that_accepts_br() {
        let body = b"hello world ".repeat(1000);
        let mut original = entry(body.clone());
        let mut headers = original.headers().clone();
        headers.insert("etag", HeaderValue::from_static("\"x\""));
        headers.insert("content-length", HeaderValue::from(body.len()));
        original = original.with_headers(headers);
        let bytes = Bytes::from(codec().encode(&original).unwrap());
        let encoded = codec().decode_for(&bytes, Reading::BrotliAccepted).unwrap();
        assert!(encoded.is_encoded());
        assert_eq!(encoded.headers()["content-encoding"], "br");
        assert_eq!(encoded.headers()["etag"], "W/\"x\"");
        assert_eq!(
            encoded.headers()["content-length"],
            encoded.body().len().to_string().as_str()
        );
        let vary: Vec<_> = encoded.headers().get_all("vary").iter().collect();
        assert_eq!(
            vary,
            ["accept", "accept-encoding"],
            "already there: not added twice"
        );
        let mut decoded = Vec::new();
        brotli::Decompressor::new(&encoded.body()[..], 4096)
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, body);

        let plain = codec().decode_for(&bytes, Reading::Decoded).unwrap();
        assert!(!plain.is_encoded());
        assert_eq!(plain.body(), &body[..]);
        // A response that forbids transformations, or is no complete 200, is decoded.
        let mut no_transform = original.headers().clone();
        no_transform.insert(
            "cache-control",
            HeaderValue::from_static("max-age=60, No-Transform"),
        );
        for kept in [
            original.clone().with_headers(no_transform),
            original.clone().with_status(StatusCode::NOT_FOUND),
        ] {
            let bytes = Bytes::from(codec().encode(&kept).unwrap());
            let read = codec().decode_for(&bytes, Reading::BrotliAccepted).unwrap();
            assert!(!read.is_encoded(), "{:?}", read.status());
            assert_eq!(read.body(), &body[..]);
        }
    }

    #[test]
    fn small_or_incompressible_bodies_are_stored_plain() {
        let small = codec().encode(&entry(b"tiny".to_vec())).unwrap();
        assert_eq!(small[1], 0);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let noisy = codec().encode(&entry(noise)).unwrap();
        assert_eq!(noisy[1], 0, "compression that saves nothing is not kept");
    }

    #[test]
    fn a_small_saving_is_not_worth_decompressing_on_every_hit() {
        // Base64 of pseudo-random bytes: brotli saves about a quarter.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let text: Vec<u8> = (0..8192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                alphabet[(state % 64) as usize]
            })
            .collect();
        let by_default = codec().encode(&entry(text.clone())).unwrap();
        assert_eq!(
            by_default[1], 0,
            "under compression.min_savings (0.3): plain"
        );
        let eager = Codec::new(
            &CacheConfig::builder()
                .compression_min_savings(0.1)
                .build()
                .unwrap(),
        );
        let compressed = eager.encode(&entry(text)).unwrap();
        assert_eq!(compressed[1], FLAG_BROTLI);
    }

    #[test]
    fn compression_can_be_disabled() {
        let config = CacheConfig::builder().compression(false).build().unwrap();
        let bytes = Codec::new(&config)
            .encode(&entry(vec![b'a'; 10_000]))
            .unwrap();
        assert_eq!(bytes[1], 0);
    }

    #[test]
    fn future_versions_and_unknown_flags_are_rejected() {
        let mut bytes = codec().encode(&entry(b"x".to_vec())).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        assert_eq!(
            codec().decode(&Bytes::from(bytes.clone())),
            Err(DecodeError::UnsupportedVersion(FORMAT_VERSION + 1))
        );
        bytes[0] = FORMAT_VERSION;
        bytes[1] = 0b1000_0000;
        assert_eq!(
            codec().decode(&Bytes::from(bytes)),
            Err(DecodeError::UnknownFlags(0b1000_0000))
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = codec().encode(&entry(b"hello world ".repeat(200))).unwrap();
        for len in 0..bytes.len() {
            assert!(
                codec()
                    .decode(&Bytes::copy_from_slice(&bytes[..len]))
                    .is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn decompression_stops_past_the_size_limit() {
        let writer_config = CacheConfig::builder()
            .max_entry_size(1 << 24)
            .build()
            .unwrap();
        let bytes = Codec::new(&writer_config)
            .encode(&entry(vec![0; 1 << 22]))
            .unwrap();
        let reader_config = CacheConfig::builder()
            .max_entry_size(1 << 20)
            .build()
            .unwrap();
        let err = Codec::new(&reader_config)
            .decode(&Bytes::from(bytes))
            .unwrap_err();
        assert_eq!(
            err,
            DecodeError::BodyLength {
                expected: 1 << 22,
                actual: (1 << 20) + 1,
                limit: 1 << 20
            }
        );
    }

    #[test]
    fn entries_with_more_tags_than_the_reader_keeps_are_rejected() {
        let tags: Vec<String> = (0..3).map(|i| format!("t{i}")).collect();
        let bytes = codec().encode(&entry(vec![1]).with_tags(tags)).unwrap();
        let reader_config = CacheConfig::builder()
            .max_tags_per_entry(2)
            .build()
            .unwrap();
        let err = Codec::new(&reader_config)
            .decode(&Bytes::from(bytes))
            .unwrap_err();
        assert_eq!(err, DecodeError::TooManyTags { count: 3, limit: 2 });
    }

    #[test]
    fn a_value_reads_back_as_its_own_type_only() {
        let body = encode_value(&("Ada".to_owned(), 36_u8)).unwrap();
        assert_eq!(body[0], VALUE_FORMAT);
        assert_eq!(
            decode_value::<(String, u8)>(&body),
            Ok(("Ada".to_owned(), 36))
        );
        assert_eq!(
            decode_value::<(String, u16)>(&body),
            Err(ValueMismatch::OtherType)
        );
        assert_eq!(
            decode_value::<String>(b"plain bytes"),
            Err(ValueMismatch::NotAValue)
        );
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_value::<(String, u8)>(&trailing),
            Err(ValueMismatch::Malformed(_))
        ));
    }

    #[test]
    fn the_type_fingerprint_is_fixed_across_builds() {
        // FNV-1a of "u32": a change here makes every stored value a miss after a deploy.
        assert_eq!(type_fingerprint::<u32>(), 0x4d2b_df19_3e85_26d1);
    }

    #[test]
    fn a_forged_length_is_refused_before_it_is_allocated() {
        let mut body = vec![VALUE_FORMAT];
        body.extend_from_slice(&type_fingerprint::<String>().to_le_bytes());
        // A varint u64 length of 1 TiB, and no string.
        body.push(0xfd);
        body.extend_from_slice(&(1_u64 << 40).to_le_bytes());
        let Err(ValueMismatch::Malformed(reason)) = decode_value::<String>(&body) else {
            panic!("a forged length is malformed");
        };
        assert!(reason.contains("LimitExceeded"), "{reason}");
    }

    #[test]
    fn a_value_claiming_sixteen_times_its_size_still_decodes() {
        // 65 532 one-byte u128s: 65 535 bytes encoded, the most of the smallest tier, each
        // claimed as 16 bytes.
        let value = vec![0_u128; 65_532];
        let body = encode_value(&value).unwrap();
        assert_eq!(body.len() - VALUE_HEADER_LEN, 65_535);
        assert_eq!(decode_value::<Vec<u128>>(&body), Ok(value));
    }

    fn arb_entry() -> impl Strategy<Value = CachedEntry> {
        let field = (
            "[a-z][a-z0-9-]{0,20}",
            proptest::collection::vec(0x20u8..0x7f, 0..40),
        );
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            prop_oneof![Just(b'a'), any::<u8>()],
            100u16..1000,
            proptest::collection::vec(field.clone(), 0..8),
            proptest::collection::vec(field, 0..3),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(".{0,12}", 0..4),
        )
            .prop_map(
                |(mut body, fill, status, headers, trailers, at, ttl, stale, tags)| {
                    if fill == b'a' {
                        body.iter_mut().for_each(|byte| *byte = fill);
                    }
                    let to_map = |fields: Vec<(String, Vec<u8>)>| {
                        let mut map = HeaderMap::new();
                        for (name, value) in fields {
                            map.append(
                                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                                HeaderValue::from_bytes(&value).unwrap(),
                            );
                        }
                        map
                    };
                    CachedEntry::new(body, Duration::from_millis(ttl.into()))
                        .with_status(StatusCode::from_u16(status).unwrap())
                        .with_headers(to_map(headers))
                        .with_trailers(to_map(trailers))
                        .with_stale_ttl(Duration::from_millis(stale.into()))
                        .with_stored_at(UNIX_EPOCH + Duration::from_millis(at.into()))
                        .with_tags(tags)
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip_preserves_every_field(entry in arb_entry()) {
            let codec = codec();
            let bytes = codec.encode(&entry).unwrap();
            prop_assert_eq!(codec.decode(&Bytes::from(bytes)).unwrap(), entry);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = codec().decode(&Bytes::from(bytes));
        }

        #[test]
        fn corrupted_entries_never_panic(
            entry in arb_entry(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = codec().encode(&entry).unwrap();
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] ^= value;
            }
            let _ = codec().decode(&Bytes::from(bytes));
        }

        #[test]
        fn bytes_after_a_value_header_never_panic(
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut body = vec![VALUE_FORMAT];
            body.extend_from_slice(&type_fingerprint::<Vec<(String, Option<u64>)>>().to_le_bytes());
            body.extend(rest);
            let _ = decode_value::<Vec<(String, Option<u64>)>>(&body);
        }

        #[test]
        fn version_byte_prefixed_garbage_never_panics(
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = vec![FORMAT_VERSION, 0];
            bytes.extend(rest);
            let _ = codec().decode(&Bytes::from(bytes));
        }
    }
}
