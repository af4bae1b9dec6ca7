//! Decoding of the kernel's ring-buffer records into typed values.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use access_log_common::{
    flags, kind, ConnectionRecord, GoCallRecord, RecordHeader, SocketAddress, UnixConnectRecord,
};

use super::Endpoint;

/// One decoded kernel record; a data record borrows its bytes from the ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Bytes moved on a followed socket: `captured` are the call's bytes from `offset` on, of
    /// the `moved` bytes in all; a non-positive `moved` is an end of stream (0) or an errno
    /// (negative). With `more`, the call's next bytes come in a continuation record.
    Data {
        header: RecordHeader,
        moved: i64,
        offset: u32,
        more: bool,
        captured: &'a [u8],
    },
    Accept {
        header: RecordHeader,
        remote: Option<Endpoint>,
    },
    /// A connect on a new socket, or (`repeated`) a failure a repeated connect reported for a
    /// connection already under way.
    Connect {
        header: RecordHeader,
        remote: Option<Endpoint>,
        result: i64,
        repeated: bool,
    },
    /// A followed socket was closed; `tcp_state` is its TCP state just before (0 unknown).
    Close {
        header: RecordHeader,
        tcp_state: u8,
    },
    /// The gateway shut down its sending side of an inbound connection.
    Shutdown {
        header: RecordHeader,
    },
    Exit {
        header: RecordHeader,
    },
    /// The thread `header.tid` woke thread `woken` of some process.
    Wake {
        header: RecordHeader,
        woken: u32,
    },
    /// A Go program's transport call (`header.call`, one of [`access_log_common::go_call`])
    /// by goroutine `header.goroutine`, about the connection `connection` (a `*persistConn`).
    GoCall {
        header: RecordHeader,
        connection: u64,
    },
}

impl Record<'_> {
    pub fn header(&self) -> &RecordHeader {
        match self {
            Record::Data { header, .. }
            | Record::Accept { header, .. }
            | Record::Connect { header, .. }
            | Record::Close { header, .. }
            | Record::Shutdown { header }
            | Record::Exit { header }
            | Record::Wake { header, .. }
            | Record::GoCall { header, .. } => header,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record kind {0} is unknown (kernel and user-space programs from different builds?)")]
    UnknownKind(u32),
    #[error("data record claims {claimed} captured bytes but carries {carried}")]
    Truncated { claimed: usize, carried: usize },
}

const HEADER: usize = size_of::<RecordHeader>();

/// The header of a raw record.
pub fn read_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: RecordHeader is plain old data and the slice holds at least its size.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RecordHeader>()) })
}

/// Converts the kernel's address into a std address; None when the family is unknown.
pub fn socket_address(address: &SocketAddress) -> Option<SocketAddr> {
    let ip = match address.family {
        2 => IpAddr::V4(Ipv4Addr::new(
            address.addr[0],
            address.addr[1],
            address.addr[2],
            address.addr[3],
        )),
        10 => {
            let v6 = Ipv6Addr::from(address.addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, address.port))
}

/// The kernel's address layout for a std address (the inverse of [`socket_address`]).
pub fn to_socket_address(address: SocketAddr) -> SocketAddress {
    let mut out = SocketAddress {
        port: address.port(),
        ..Default::default()
    };
    match address.ip() {
        IpAddr::V4(v4) => {
            out.family = 2;
            out.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.family = 10;
            out.addr = v6.octets();
        }
    }
    out
}

/// The path of a unix socket address as text: up to its first NUL; an abstract socket (a
/// leading NUL) is written with a leading `@`, as ss and netstat do.
fn unix_path(raw: &[u8]) -> Option<Arc<str>> {
    let (abstract_name, raw) = match raw.split_first() {
        Some((0, rest)) => (true, rest),
        _ => (false, raw),
    };
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if end == 0 {
        return None;
    }
    let path = String::from_utf8_lossy(&raw[..end]);
    Some(Arc::from(if abstract_name {
        format!("@{path}")
    } else {
        path.into_owned()
    }))
}

/// Decodes one record as it came out of the ring buffer.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header = read_header(bytes)?;
    match header.kind {
        kind::DATA => {
            let claimed = header.captured_len as usize;
            let carried = bytes.len() - HEADER;
            if claimed > carried {
                return Err(DecodeError::Truncated { claimed, carried });
            }
            Ok(Record::Data {
                header,
                moved: header.result,
                offset: header.offset,
                more: header.flags & flags::MORE != 0,
                captured: &bytes[HEADER..HEADER + claimed],
            })
        }
        kind::ACCEPT | kind::CONNECT => {
            if bytes.len() < size_of::<ConnectionRecord>() {
                return Err(DecodeError::Short(bytes.len()));
            }
            // SAFETY: plain old data, length checked above.
            let record: ConnectionRecord =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let remote = socket_address(&record.remote).map(Endpoint::Ip);
            Ok(if header.kind == kind::ACCEPT {
                Record::Accept { header, remote }
            } else {
                Record::Connect {
                    header,
                    remote,
                    result: header.result,
                    repeated: header.flags & flags::REPEATED != 0,
                }
            })
        }
        kind::CONNECT_UNIX => {
            if bytes.len() < size_of::<UnixConnectRecord>() {
                return Err(DecodeError::Short(bytes.len()));
            }
            // SAFETY: plain old data, length checked above.
            let record: UnixConnectRecord =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Ok(Record::Connect {
                header,
                remote: unix_path(&record.path).map(Endpoint::Unix),
                result: header.result,
                repeated: header.flags & flags::REPEATED != 0,
            })
        }
        kind::CLOSE => Ok(Record::Close {
            header,
            tcp_state: header.result.clamp(0, 255) as u8,
        }),
        kind::SHUTDOWN => Ok(Record::Shutdown { header }),
        kind::EXIT => Ok(Record::Exit { header }),
        kind::GO_CALL => {
            if bytes.len() < size_of::<GoCallRecord>() {
                return Err(DecodeError::Short(bytes.len()));
            }
            // SAFETY: plain old data, length checked above.
            let record: GoCallRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Ok(Record::GoCall {
                header,
                connection: record.connection,
            })
        }
        kind::WAKE => Ok(Record::Wake {
            header,
            woken: header.result.clamp(0, u32::MAX as i64) as u32,
        }),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of plain old data.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_data_with_its_captured_head() {
        let header = RecordHeader {
            kind: kind::DATA,
            tgid: 7,
            fd: 3,
            captured_len: 4,
            result: 100,
            flags: flags::MORE,
            ..Default::default()
        };
        let mut raw = bytes_of(&header);
        raw.extend_from_slice(b"GET /");
        let Record::Data {
            moved,
            captured,
            more,
            ..
        } = decode(&raw).unwrap()
        else {
            panic!("not data")
        };
        assert_eq!(moved, 100);
        assert_eq!(captured, b"GET ");
        assert!(more);
    }

    #[test]
    fn decodes_connect_address() {
        let mut record = ConnectionRecord::default();
        record.header.kind = kind::CONNECT;
        record.header.result = -115;
        record.remote.family = 2;
        record.remote.port = 8080;
        record.remote.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let raw = bytes_of(&record);
        let decoded = decode(&raw).unwrap();
        assert_eq!(
            decoded,
            Record::Connect {
                header: record.header,
                remote: Some("127.0.0.1:8080".parse().unwrap()),
                result: -115,
                repeated: false,
            }
        );
    }

    #[test]
    fn decodes_a_unix_connect_and_an_abstract_one() {
        let mut record = UnixConnectRecord {
            header: RecordHeader {
                kind: kind::CONNECT_UNIX,
                ..Default::default()
            },
            path: [0; access_log_common::UNIX_PATH_MAX],
            _pad: 0,
        };
        record.path[..14].copy_from_slice(b"/run/app.sock\0");
        let Record::Connect { remote, .. } = decode(&bytes_of(&record)).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(remote, Some(Endpoint::Unix("/run/app.sock".into())));
        assert_eq!(remote.unwrap().to_string(), "unix:/run/app.sock");
        record.path[..5].copy_from_slice(b"\0app\0");
        let Record::Connect { remote, .. } = decode(&bytes_of(&record)).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(remote, Some(Endpoint::Unix("@app".into())));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        let header = RecordHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes_of(&header)),
            Err(DecodeError::UnknownKind(99))
        );
        let header = RecordHeader {
            kind: kind::DATA,
            captured_len: 50,
            ..Default::default()
        };
        assert!(matches!(
            decode(&bytes_of(&header)),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
