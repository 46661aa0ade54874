//! The recording file: a fixed header, then the recording, deflated.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "\x89PRF\r\n\x1a\n" (catches text-mode mangling, like PNG's)
//! 8       4     format version, little-endian
//! 12      8     body length in bytes, little-endian
//! 20      4     CRC-32 of the body
//! 24      ...   body: deflate(MessagePack(Recording)), structs as maps keyed by field name
//! ```
//!
//! The body names every field, so the format grows without a new version: a reader fills fields a
//! file lacks with their defaults and skips fields it does not know. The version changes only when
//! a field changes meaning. Version 1 (postcard, no names) is still read, through `v1`.

use std::{
    fs,
    io::{Read, Write},
    path::Path,
};

use flate2::{Compression, read::DeflateDecoder, write::DeflateEncoder};
use serde::Deserialize as _;

use super::Recording;

pub const MAGIC: [u8; 8] = *b"\x89PRF\r\n\x1a\n";
/// Bumped when a field changes meaning (adding one needs no bump); older readers refuse newer files.
pub const FORMAT_VERSION: u32 = 2;
/// The last version whose body was postcard.
const POSTCARD_VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// A recording holds aggregates; anything that inflates past this is not one of ours.
const MAX_BODY_INFLATED: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a profiler recording (unknown file signature)")]
    NotARecording,
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
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(body).expect("writing into memory cannot fail");
    let body = encoder.finish().expect("writing into memory cannot fail");

    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses a recording, rejecting anything that is not a complete file of a version we read.
pub fn read(bytes: &[u8]) -> Result<Recording, RecordingError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(RecordingError::NotARecording);
    }
    if bytes.len() < HEADER_LEN {
        return Err(RecordingError::Truncated { expected: HEADER_LEN as u64, found: bytes.len() as u64 });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(RecordingError::NewerVersion { found: version, supported: FORMAT_VERSION });
    }
    if version == 0 {
        return Err(RecordingError::Corrupt("format version 0".into()));
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_LEN..];
    let expected = (HEADER_LEN as u64).saturating_add(body_len);
    if (body.len() as u64) < body_len {
        return Err(RecordingError::Truncated { expected, found: bytes.len() as u64 });
    }
    if body.len() as u64 > body_len {
        return Err(RecordingError::Corrupt(format!("{} bytes of trailing data", body.len() as u64 - body_len)));
    }
    if crc32fast::hash(body) != crc {
        return Err(RecordingError::Corrupt("checksum mismatch".into()));
    }
    let mut inflated = Vec::new();
    DeflateDecoder::new(body)
        .take(MAX_BODY_INFLATED)
        .read_to_end(&mut inflated)
        .map_err(|e| RecordingError::Corrupt(format!("cannot decompress: {e}")))?;
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

pub fn read_file(path: &Path) -> Result<Recording, RecordingError> {
    let bytes = fs::read(path)?;
    read(&bytes)
}

/// Writes atomically: an interrupted write never leaves a partial file under the final name.
pub fn write_file(path: &Path, recording: &Recording) -> anyhow::Result<()> {
    let bytes = write(recording);
    crate::atomic_file::write(path, |out| Ok(out.write_all(&bytes)?))
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
}
