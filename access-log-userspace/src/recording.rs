//! Record files: the raw kernel records of a live session, so `access-log replay` can turn them
//! into the same events offline, without privileges (and tests and benchmarks can use them).
//!
//! Format, version 1: the 8 bytes `ALREC01\n`, then entries, each a type byte, a little-endian
//! u32 payload length, and the payload:
//! - 1 `clock`: i128 LE, wall-clock minus monotonic nanoseconds at attach (first entry);
//! - 2 `existing connection`: tgid u32 LE, fd i32 LE, direction u8 (0 inbound, 1 outbound),
//!   then the remote address as UTF-8 text (`127.0.0.1:8080`);
//! - 3 `kernel record`: the bytes of one ring-buffer record (see access-log-common), with the
//!   peer address of an accept that gave none filled in from /proc.
use std::{
    io::{self, BufRead, Write},
    net::SocketAddr,
};

use bytes::{Bytes, BytesMut};

use crate::pipeline::{Clock, ConnectionKey, Direction};

pub const MAGIC: &[u8; 8] = b"ALREC01\n";
const CLOCK: u8 = 1;
const EXISTING: u8 = 2;
const RECORD: u8 = 3;
/// No entry is larger: a record is at most a header and MAX_CAPTURE bytes.
const MAX_ENTRY: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Clock(Clock),
    Existing {
        key: ConnectionKey,
        direction: Direction,
        remote: Option<SocketAddr>,
    },
    Record(Bytes),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error(
        "not an access-log record file (bad magic; expected {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    BadMagic,
    #[error("entry {index} is cut short (the recording was interrupted?)")]
    Truncated { index: u64 },
    #[error("entry {index} has unknown type {kind} (a newer format?)")]
    UnknownType { index: u64, kind: u8 },
    #[error("entry {index} is malformed: {why}")]
    Malformed { index: u64, why: &'static str },
    #[error("reading the record file: {0}")]
    Io(#[from] io::Error),
}

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, clock: Clock) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        let mut writer = Writer { out };
        writer.entry(CLOCK, &clock.offset_ns.to_le_bytes())?;
        Ok(writer)
    }

    fn entry(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        self.out.write_all(&[kind])?;
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(payload)
    }

    pub fn existing(
        &mut self,
        key: ConnectionKey,
        direction: Direction,
        remote: Option<SocketAddr>,
    ) -> io::Result<()> {
        let mut payload = Vec::with_capacity(32);
        payload.extend_from_slice(&key.0.to_le_bytes());
        payload.extend_from_slice(&key.1.to_le_bytes());
        payload.push(match direction {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        });
        if let Some(remote) = remote {
            payload.extend_from_slice(remote.to_string().as_bytes());
        }
        self.entry(EXISTING, &payload)
    }

    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.entry(RECORD, bytes)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads entries one by one; an error ends the file (what came before it stands).
pub struct Reader<R: BufRead> {
    input: R,
    index: u64,
    /// Payloads are read here and handed out as frozen slices; once the caller drops one, its
    /// memory is reused for the next (no allocation per record).
    buffer: BytesMut,
}

impl<R: BufRead> Reader<R> {
    pub fn new(mut input: R) -> Result<Self, RecordingError> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| RecordingError::BadMagic)?;
        if &magic != MAGIC {
            return Err(RecordingError::BadMagic);
        }
        Ok(Reader {
            input,
            index: 0,
            buffer: BytesMut::new(),
        })
    }

    pub fn next_entry(&mut self) -> Result<Option<Entry>, RecordingError> {
        let index = self.index;
        if self.input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        self.input
            .read_exact(&mut head)
            .map_err(|_| RecordingError::Truncated { index })?;
        let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if length > MAX_ENTRY {
            return Err(RecordingError::Malformed {
                index,
                why: "longer than any record",
            });
        }
        self.buffer.clear();
        self.buffer.resize(length as usize, 0);
        self.input
            .read_exact(&mut self.buffer)
            .map_err(|_| RecordingError::Truncated { index })?;
        let payload = self.buffer.split().freeze();
        self.index += 1;
        let malformed = |why| RecordingError::Malformed { index, why };
        Ok(Some(match head[0] {
            CLOCK => {
                let bytes: [u8; 16] = payload[..]
                    .try_into()
                    .map_err(|_| malformed("clock is not 16 bytes"))?;
                Entry::Clock(Clock {
                    offset_ns: i128::from_le_bytes(bytes),
                })
            }
            EXISTING => {
                if payload.len() < 9 {
                    return Err(malformed("connection entry shorter than 9 bytes"));
                }
                let tgid = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
                let fd = i32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
                let direction = match payload[8] {
                    0 => Direction::Inbound,
                    1 => Direction::Outbound,
                    _ => return Err(malformed("direction is neither 0 nor 1")),
                };
                let remote = std::str::from_utf8(&payload[9..])
                    .ok()
                    .and_then(|s| s.parse().ok());
                Entry::Existing {
                    key: (tgid, fd),
                    direction,
                    remote,
                }
            }
            RECORD => Entry::Record(payload),
            kind => return Err(RecordingError::UnknownType { index, kind }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mut bytes = Vec::new();
        let mut writer = Writer::new(&mut bytes, Clock { offset_ns: -42 }).unwrap();
        writer
            .existing(
                (7, 3),
                Direction::Outbound,
                Some("127.0.0.1:80".parse().unwrap()),
            )
            .unwrap();
        writer.record(b"raw").unwrap();
        let mut reader = Reader::new(&bytes[..]).unwrap();
        assert_eq!(
            reader.next_entry().unwrap(),
            Some(Entry::Clock(Clock { offset_ns: -42 }))
        );
        assert_eq!(
            reader.next_entry().unwrap(),
            Some(Entry::Existing {
                key: (7, 3),
                direction: Direction::Outbound,
                remote: Some("127.0.0.1:80".parse().unwrap())
            })
        );
        assert_eq!(
            reader.next_entry().unwrap(),
            Some(Entry::Record(Bytes::from_static(b"raw")))
        );
        assert_eq!(reader.next_entry().unwrap(), None);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(matches!(
            Reader::new(&b"GIF89a.."[..]),
            Err(RecordingError::BadMagic)
        ));
        let mut bytes = Vec::new();
        Writer::new(&mut bytes, Clock { offset_ns: 0 }).unwrap();
        bytes.extend_from_slice(&[3, 100, 0, 0, 0, 1, 2]);
        let mut reader = Reader::new(&bytes[..]).unwrap();
        reader.next_entry().unwrap();
        assert!(matches!(
            reader.next_entry(),
            Err(RecordingError::Truncated { index: 1 })
        ));
    }
}
