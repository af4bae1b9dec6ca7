//! Capture files: the raw kernel records of a live session (`access-log record`), so
//! `access-log replay` can turn them into the same events offline, without privileges (and
//! tests and benchmarks can use them).
//!
//! Format, version 2: the 8 bytes `ALREC02\n`, then entries, each a type byte, a little-endian
//! u32 payload length, and the payload:
//! - 1 `clock`: i128 LE, wall-clock minus monotonic nanoseconds at attach (first entry);
//! - 2 `existing connection`: tgid u32 LE, fd i32 LE, direction u8 (0 inbound, 1 outbound),
//!   then the remote endpoint as UTF-8 text (`127.0.0.1:8080`, `unix:/run/app.sock`);
//! - 3 `kernel record`: the bytes of one ring-buffer record (see access-log-common);
//! - 4 `peer`: tgid u32 LE, fd i32 LE, then the remote endpoint as text: the peer of the
//!   accept record that follows, read from /proc because the accept gave none.
use std::io::{self, BufRead, Write};

use bytes::{Bytes, BytesMut};

use super::{Clock, ConnectionKey, Direction, Endpoint, RecordConsumer};

pub const MAGIC: &[u8; 8] = b"ALREC02\n";
/// The magic of the first format, whose kernel records had a shorter header.
const MAGIC_V1: &[u8; 8] = b"ALREC01\n";
const CLOCK: u8 = 1;
const EXISTING: u8 = 2;
const RECORD: u8 = 3;
const PEER: u8 = 4;
/// No entry is larger: a record is at most a header and MAX_CAPTURE bytes.
const MAX_ENTRY: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Clock(Clock),
    Existing {
        key: ConnectionKey,
        direction: Direction,
        remote: Option<Endpoint>,
    },
    Peer {
        key: ConnectionKey,
        remote: Endpoint,
    },
    Record(Bytes),
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    #[error(
        "not an access-log capture file (bad magic; expected {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    BadMagic,
    #[error("a capture file of an older access-log (format 1): record it again")]
    OldFormat,
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
        remote: Option<&Endpoint>,
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

    pub fn peer(&mut self, key: ConnectionKey, remote: &Endpoint) -> io::Result<()> {
        let mut payload = Vec::with_capacity(32);
        payload.extend_from_slice(&key.0.to_le_bytes());
        payload.extend_from_slice(&key.1.to_le_bytes());
        payload.extend_from_slice(remote.to_string().as_bytes());
        self.entry(PEER, &payload)
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
    pub fn new(mut input: R) -> Result<Self, CaptureFileError> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| CaptureFileError::BadMagic)?;
        if &magic == MAGIC_V1 {
            return Err(CaptureFileError::OldFormat);
        }
        if &magic != MAGIC {
            return Err(CaptureFileError::BadMagic);
        }
        Ok(Reader {
            input,
            index: 0,
            buffer: BytesMut::new(),
        })
    }

    pub fn next_entry(&mut self) -> Result<Option<Entry>, CaptureFileError> {
        let index = self.index;
        if self.input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        self.input
            .read_exact(&mut head)
            .map_err(|_| CaptureFileError::Truncated { index })?;
        let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if length > MAX_ENTRY {
            return Err(CaptureFileError::Malformed {
                index,
                why: "longer than any record",
            });
        }
        self.buffer.clear();
        self.buffer.resize(length as usize, 0);
        self.input
            .read_exact(&mut self.buffer)
            .map_err(|_| CaptureFileError::Truncated { index })?;
        let payload = self.buffer.split().freeze();
        self.index += 1;
        let malformed = |why| CaptureFileError::Malformed { index, why };
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
            PEER => {
                if payload.len() < 8 {
                    return Err(malformed("peer entry shorter than 8 bytes"));
                }
                let tgid = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
                let fd = i32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
                let remote = std::str::from_utf8(&payload[8..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| malformed("peer entry without an address"))?;
                Entry::Peer {
                    key: (tgid, fd),
                    remote,
                }
            }
            RECORD => Entry::Record(payload),
            kind => return Err(CaptureFileError::UnknownType { index, kind }),
        }))
    }
}

/// Feeds a capture file's entries after its clock to `consumer`, a batch at a time. On an
/// error, the entries before it have been fed.
pub fn replay<R: BufRead>(
    reader: &mut Reader<R>,
    consumer: &mut dyn RecordConsumer,
) -> Result<(), CaptureFileError> {
    const BATCH: u64 = 4096;
    let mut entries = 0u64;
    let result = loop {
        let entry = match reader.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        match entry {
            Entry::Clock(_) => {}
            Entry::Existing {
                key,
                direction,
                remote,
            } => consumer.existing(key, direction, remote),
            Entry::Peer { key, remote } => consumer.peer(key, remote),
            Entry::Record(bytes) => consumer.record(&bytes),
        }
        entries += 1;
        if entries.is_multiple_of(BATCH) {
            consumer.batch_done();
        }
    };
    consumer.batch_done();
    result
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
                Some(&"127.0.0.1:80".parse().unwrap()),
            )
            .unwrap();
        writer
            .peer((7, 4), &"unix:/run/app.sock".parse().unwrap())
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
            Some(Entry::Peer {
                key: (7, 4),
                remote: Endpoint::Unix("/run/app.sock".into())
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
            Err(CaptureFileError::BadMagic)
        ));
        assert!(matches!(
            Reader::new(&b"ALREC01\n"[..]),
            Err(CaptureFileError::OldFormat)
        ));
        let mut bytes = Vec::new();
        Writer::new(&mut bytes, Clock { offset_ns: 0 }).unwrap();
        bytes.extend_from_slice(&[3, 100, 0, 0, 0, 1, 2]);
        let mut reader = Reader::new(&bytes[..]).unwrap();
        reader.next_entry().unwrap();
        assert!(matches!(
            reader.next_entry(),
            Err(CaptureFileError::Truncated { index: 1 })
        ));
    }
}
