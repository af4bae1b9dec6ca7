//! llhttp's request fixtures through `access-log replay`: each fixture becomes the kernel
//! records of one inbound connection (accept, reads of at most the default capture window,
//! close) in a record file; the replayed INCOMING_REQUESTs must name llhttp's method and URL for
//! every request of every strict fixture llhttp accepts, and for lenient and malformed ones be
//! well-formed heads or nothing. Runs without privileges: replay needs none.
use std::{collections::HashMap, process::Command};

use access_log::kernel::{capture_file::Writer, Clock};
use access_log_common::{call, kind, ConnectionRecord, RecordHeader, DEFAULT_CAPTURE};
use tests::vectors::{self, Kind};

const GATEWAY: u32 = 4242;

fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: viewing a plain-old-data record as its bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
}

fn header(record_kind: u32, fd: i32, at: u64) -> RecordHeader {
    RecordHeader {
        timestamp_ns: at,
        kind: record_kind,
        tgid: GATEWAY,
        tid: GATEWAY,
        fd,
        ..Default::default()
    }
}

#[test]
fn llhttp_request_fixtures_replay_to_their_heads() {
    // Every request fixture, lenient and malformed ones too; each from a client address of
    // its own, so its events are told apart.
    let cases: Vec<_> = vectors::load_all()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|c| c.side == Kind::Request)
        .collect();
    assert!(cases.len() > 100, "only {} request fixtures", cases.len());
    let client = |index: usize| [10, 0, (index / 250) as u8, (index % 250) as u8 + 1];
    let mut file = Vec::new();
    let mut writer = Writer::new(&mut file, Clock { offset_ns: 0 }).unwrap();
    let mut at = 1_000_000u64;
    for (index, case) in cases.iter().enumerate() {
        let fd = 10 + index as i32;
        at += 1000;
        let mut accept = ConnectionRecord {
            header: header(kind::ACCEPT, fd, at),
            ..Default::default()
        };
        accept.remote.family = 2;
        accept.remote.port = 40000;
        accept.remote.addr[..4].copy_from_slice(&client(index));
        writer.record(&bytes_of(&accept)).unwrap();
        // One read per capture window, as the kernel side would copy them.
        for chunk in case.raw.chunks(DEFAULT_CAPTURE as usize) {
            at += 1000;
            let mut data = header(kind::DATA, fd, at);
            data.call = call::RECVFROM;
            data.result = chunk.len() as i64;
            data.captured_len = chunk.len() as u32;
            let mut record = bytes_of(&data);
            record.extend_from_slice(chunk);
            writer.record(&record).unwrap();
        }
        at += 1000;
        writer
            .record(&bytes_of(&header(kind::CLOSE, fd, at)))
            .unwrap();
    }
    writer.flush().unwrap();
    let path = std::env::temp_dir().join(format!("access-log-llhttp-{}.alrec", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_access-log"))
        .args(["replay", "--format", "json"])
        .arg(&path)
        .output()
        .expect("running access-log replay");
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut replayed: HashMap<String, Vec<String>> = HashMap::new();
    for line in String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
    {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if event["Event"] != "INCOMING_REQUEST" {
            continue;
        }
        let method = event["RequestInMethod"].as_str().unwrap();
        let url = event["RequestInURL"].as_str().unwrap();
        // Whatever the bytes, a head the observer reports is a request line's method token
        // and a target without spaces or control characters.
        assert!(
            !method.is_empty() && method.bytes().all(|b| b.is_ascii_graphic()),
            "{line}"
        );
        assert!(
            !url.contains(|c: char| c.is_control() || c == ' '),
            "{line}"
        );
        let ip = event["RemoteIP"].as_str().unwrap().to_owned();
        replayed
            .entry(ip)
            .or_default()
            .push(format!("{method} {url}"));
    }
    // Where llhttp's strict mode accepts the bytes, the heads are llhttp's.
    let mut differ = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if !case.strict || case.rejected {
            continue;
        }
        let ip = std::net::Ipv4Addr::from(client(index)).to_string();
        let got = replayed.remove(&ip).unwrap_or_default();
        if got != case.expected {
            differ.push(format!(
                "{} / {}: llhttp {:?}, replayed {got:?}",
                case.file, case.title, case.expected
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
