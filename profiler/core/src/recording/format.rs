//! The recording file: a fixed header, then the recording, deflated.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "\x89PRF\r\n\x1a\n" (catches text-mode mangling, like PNG's)
//! 8       4     format version, little-endian
//! 12      8     body length in bytes, little-endian
//! 20      4     CRC-32 of the body
//! 24      8     inflated body length in bytes, little-endian (since version 3)
//! 32      ...   body: deflate(MessagePack(Recording)), structs as maps keyed by field name
//! ```
//!
//! The reader trusts none of the lengths beyond what it checks: the body must be exactly as long
//! as declared, and inflates to exactly its declared length or is refused, so a small file cannot
//! make the reader allocate gigabytes.
//!
//! The body names every field, so the format grows without a new version: a reader fills fields a
//! file lacks with their defaults and skips fields it does not know. The version changes only when
//! a field changes meaning. Version 1 (postcard, no names) is still read, through `v1`, and version
//! 2 (no inflated length) with its inflation bounded by a ratio no recording comes near.

use std::{
    fs,
    io::{Read, Write},
    path::Path,
};

use flate2::{Compression, read::DeflateDecoder, write::DeflateEncoder};
use serde::Deserialize as _;

use super::Recording;
use crate::atomic_file::Access;

pub const MAGIC: [u8; 8] = *b"\x89PRF\r\n\x1a\n";
/// Bumped when a field changes meaning (adding one needs no bump); older readers refuse newer files.
pub const FORMAT_VERSION: u32 = 3;
/// The last version whose body was postcard.
const POSTCARD_VERSION: u32 = 1;
/// The last version without the inflated length in its header.
const UNSIZED_VERSION: u32 = 2;
const HEADER_LEN: usize = 32;
const UNSIZED_HEADER_LEN: usize = 24;
/// A recording holds aggregates; anything that inflates past this is not one of ours.
const MAX_BODY_INFLATED: u64 = 1 << 30;
/// Bound on inflation for files that do not declare their inflated length: recordings compress
/// about 5-20 times; a body that inflates 256 times is a deflate bomb, not a recording.
const MAX_UNSIZED_RATIO: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a profiler recording (unknown file signature)")]
    NotARecording,
    #[error("not a regular file: give the path of a recording")]
    NotAFile,
    #[error(
        "recording format version {found} is newer than this profiler reads (up to {supported}): upgrade the profiler"
    )]
    NewerVersion { found: u32, supported: u32 },
    #[error("truncated recording: {found} of {expected} bytes present")]
    Truncated { expected: u64, found: u64 },
    #[error("corrupt recording: {0}")]
    Corrupt(String),
}

/// Serializes a recording into the file format.
pub fn write(recording: &Recording) -> Vec<u8> {
    frame(&rmp_serde::to_vec_named(recording).expect("serializing into memory cannot fail"))
}

/// Wraps an encoded (MessagePack) body into the file format: compression, header and checksum.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let raw_len = body.len();
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(body).expect("writing into memory cannot fail");
    let body = encoder.finish().expect("writing into memory cannot fail");

    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(raw_len as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses a recording, rejecting anything that is not a complete file of a version we read.
pub fn read(bytes: &[u8]) -> Result<Recording, RecordingError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(RecordingError::NotARecording);
    }
    if bytes.len() < UNSIZED_HEADER_LEN {
        return Err(RecordingError::Truncated { expected: HEADER_LEN as u64, found: bytes.len() as u64 });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(RecordingError::NewerVersion { found: version, supported: FORMAT_VERSION });
    }
    if version == 0 {
        return Err(RecordingError::Corrupt("format version 0".into()));
    }
    let header_len = if version <= UNSIZED_VERSION { UNSIZED_HEADER_LEN } else { HEADER_LEN };
    if bytes.len() < header_len {
        return Err(RecordingError::Truncated { expected: header_len as u64, found: bytes.len() as u64 });
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let body = &bytes[header_len..];
    let expected = (header_len as u64).saturating_add(body_len);
    if (body.len() as u64) < body_len {
        return Err(RecordingError::Truncated { expected, found: bytes.len() as u64 });
    }
    if body.len() as u64 > body_len {
        return Err(RecordingError::Corrupt(format!("{} bytes of trailing data", body.len() as u64 - body_len)));
    }
    if crc32fast::hash(body) != crc {
        return Err(RecordingError::Corrupt("checksum mismatch".into()));
    }
    let declared = (version > UNSIZED_VERSION).then(|| u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes")));
    let inflated = inflate(body, declared)?;
    let corrupt = |e: &dyn std::fmt::Display| RecordingError::Corrupt(format!("cannot decode: {e}"));
    if version == POSTCARD_VERSION {
        let old = postcard::from_bytes::<super::v1::Recording>(&inflated).map_err(|e| corrupt(&e))?;
        return super::v1::upgrade(&old).map_err(|e| corrupt(&e));
    }
    let mut rest = &inflated[..];
    let recording = Recording::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).map_err(|e| corrupt(&e))?;
    if !rest.is_empty() {
        return Err(RecordingError::Corrupt(format!("{} bytes after the recording", rest.len())));
    }
    Ok(recording)
}

/// Inflates the body to its declared length exactly (or, without one, to a bounded ratio of it).
fn inflate(body: &[u8], declared: Option<u64>) -> Result<Vec<u8>, RecordingError> {
    let limit = match declared {
        Some(len) if len > MAX_BODY_INFLATED => {
            return Err(RecordingError::Corrupt(format!("declares {len} bytes inflated, more than any recording")));
        }
        Some(len) => len,
        None => (body.len() as u64).saturating_mul(MAX_UNSIZED_RATIO).min(MAX_BODY_INFLATED),
    };
    let mut inflated = Vec::with_capacity(declared.unwrap_or(0).min(1 << 24) as usize);
    DeflateDecoder::new(body)
        .take(limit.saturating_add(1))
        .read_to_end(&mut inflated)
        .map_err(|e| RecordingError::Corrupt(format!("cannot decompress: {e}")))?;
    let found = inflated.len() as u64;
    match declared {
        Some(len) if found != len => {
            Err(RecordingError::Corrupt(format!("inflates to more or less than its declared {len} bytes")))
        }
        None if found > limit => Err(RecordingError::Corrupt(format!("inflates past {limit} bytes: not a recording"))),
        _ => Ok(inflated),
    }
}

/// Reads a recording file; anything but a regular file (a device, a FIFO, a directory) is refused
/// before it is opened, so `report /dev/zero` or a FIFO neither grows nor blocks.
pub fn read_file(path: &Path) -> Result<Recording, RecordingError> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(RecordingError::NotAFile);
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_BODY_INFLATED) as usize);
    fs::File::open(path)?.take(MAX_BODY_INFLATED).read_to_end(&mut bytes)?;
    read(&bytes)
}

/// Writes atomically: an interrupted write never leaves a partial file under the final name.
/// Recordings are private to their owner (0600), as perf.data is.
pub fn write_file(path: &Path, recording: &Recording) -> anyhow::Result<()> {
    write_prepared(crate::atomic_file::prepare(path, Access::Private)?, recording)
}

/// Writes into an output opened before recording began.
pub fn write_prepared(output: crate::atomic_file::Prepared, recording: &Recording) -> anyhow::Result<()> {
    let bytes = write(recording);
    output.write(|out| Ok(out.write_all(&bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{LatencyHistogram, Metadata};

    fn sample() -> Recording {
        let mut recording = Recording {
            meta: Metadata { hostname: "host".into(), cpus: 2, ..Default::default() },
            ..Default::default()
        };
        recording.runq = Some(crate::recording::RunqLatency {
            system: LatencyHistogram { buckets: vec![(10, 5), (300, 2)] },
            ..Default::default()
        });
        recording
    }

    #[test]
    fn round_trip() {
        let recording = sample();
        assert_eq!(read(&write(&recording)).unwrap(), recording);
    }

    /// A file written by format version 1 (postcard), committed as written by profiler 0.1.0: two
    /// workloads, one burning CPU in `hot_seventy`/`hot_thirty`, one making 1000 getppid calls
    /// and 7 failing opens.
    #[test]
    fn version_1_files_stay_readable() {
        let bytes = include_bytes!("../../../../tests/fixtures/format-v1.rec");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        let recording = read(bytes).unwrap();
        assert_eq!(recording.meta.options.probes, ["sched", "syscalls", "cpu"]);
        assert_eq!(recording.meta.profiler_version, "0.1.0");
        let getppid = syscalls::Sysno::getppid.id() as u32;
        let openat = syscalls::Sysno::openat.id() as u32;
        let rows = &recording.syscalls.as_ref().unwrap().per_process;
        assert_eq!(rows.iter().find(|r| r.nr == getppid).unwrap().count, 1000);
        let opens = rows.iter().find(|r| r.nr == openat).unwrap();
        assert_eq!((opens.errors, opens.errnos.clone()), (7, vec![(2, 7)]));
        let stacks = recording.stacks.as_ref().unwrap();
        assert!(stacks.frames.iter().any(|f| f.function == "workload::hot_seventy"));
        assert!(stacks.stacks.iter().map(|s| s.count).sum::<u64>() > 100);
        assert!(recording.processes.values().any(|p| p.comm == "workload"));
        // Read once, it writes as today's version and reads back the same.
        assert_eq!(read(&write(&recording)).unwrap(), recording);
    }

    /// Fields a reader does not know are skipped, and fields a file lacks take their defaults: the
    /// format grows without a new version.
    #[test]
    fn fields_can_be_added_and_removed() {
        #[derive(serde::Serialize)]
        struct Future {
            meta: Metadata,
            a_field_from_the_future: Vec<u32>,
        }
        let future = Future {
            meta: Metadata { hostname: "host".into(), ..Default::default() },
            a_field_from_the_future: vec![1, 2, 3],
        };
        let recording = read(&frame(&rmp_serde::to_vec_named(&future).unwrap())).unwrap();
        assert_eq!(recording.meta.hostname, "host");
        assert_eq!(recording.runq, None);
        assert_eq!(recording.counters, Default::default());
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = write(&sample());
        for len in 0..bytes.len() {
            let error = read(&bytes[..len]).unwrap_err();
            assert!(
                matches!(error, RecordingError::Truncated { .. } | RecordingError::NotARecording),
                "length {len}: {error}"
            );
        }
    }

    #[test]
    fn foreign_newer_and_corrupt_files_are_rejected() {
        assert!(matches!(read(b"hello world, not a recording"), Err(RecordingError::NotARecording)));
        let mut newer = write(&sample());
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(matches!(read(&newer), Err(RecordingError::NewerVersion { .. })));
        let mut flipped = write(&sample());
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(read(&flipped), Err(RecordingError::Corrupt(_))));
        let mut trailing = write(&sample());
        trailing.push(0);
        assert!(matches!(read(&trailing), Err(RecordingError::Corrupt(_))));
        let mut body = rmp_serde::to_vec_named(&sample()).unwrap();
        body.push(0xc0);
        assert!(matches!(read(&frame(&body)), Err(RecordingError::Corrupt(_))), "bytes after the body's value");
    }

    /// A body that inflates past its declared length is refused without inflating it all: 64 MiB
    /// of zeros deflate to 64 KiB, declared as 100 bytes.
    #[test]
    fn inflation_is_bounded_by_the_declared_length() {
        let mut bomb = frame(&vec![0u8; 64 << 20]);
        bomb[24..32].copy_from_slice(&100u64.to_le_bytes());
        let error = read(&bomb).unwrap_err();
        assert_eq!(error.to_string(), "corrupt recording: inflates to more or less than its declared 100 bytes");
        let mut huge = frame(b"x");
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read(&huge), Err(RecordingError::Corrupt(_))));
        // Version 2 had no declared length: the ratio bounds it.
        let mut undeclared = frame(&vec![0u8; 64 << 20]);
        undeclared.drain(24..32);
        undeclared[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(read(&undeclared).unwrap_err().to_string().contains("inflates past"));
        let mut version_2 = write(&sample());
        version_2.drain(24..32);
        version_2[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(read(&version_2).unwrap(), sample());
    }

    #[test]
    fn only_regular_files_are_read() {
        assert!(matches!(read_file(Path::new("/dev/zero")), Err(RecordingError::NotAFile)));
        assert!(matches!(read_file(Path::new("/")), Err(RecordingError::NotAFile)));
    }
}
