//! llhttp's request fixtures through `access-log replay`: each fixture becomes the kernel
//! records of one inbound connection (accept, reads of at most the default capture window,
//! close) in a record file, and the replayed INCOMING_REQUESTs must name llhttp's method and URL
//! for every request of every fixture. Runs without privileges: replay needs none.
use std::process::Command;

use access_log::{pipeline::Clock, recording::Writer};
use access_log_common::{kind, syscall, ConnectionRecord, RecordHeader, DEFAULT_CAPTURE};
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
    let cases: Vec<_> = vectors::load()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|c| c.side == Kind::Request)
        .collect();
    assert!(cases.len() > 50, "only {} request fixtures", cases.len());
    let mut file = Vec::new();
    let mut writer = Writer::new(&mut file, Clock { offset_ns: 0 }).unwrap();
    let mut at = 1_000_000u64;
    let mut expected = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let fd = 10 + index as i32;
        at += 1000;
        let mut accept = ConnectionRecord {
            header: header(kind::ACCEPT, fd, at),
            ..Default::default()
        };
        accept.remote.family = 2;
        accept.remote.port = 40000;
        accept.remote.addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        writer.record(&bytes_of(&accept)).unwrap();
        // One read per capture window, as the kernel side would copy them.
        for chunk in case.raw.chunks(DEFAULT_CAPTURE as usize) {
            at += 1000;
            let mut data = header(kind::DATA, fd, at);
            data.syscall = syscall::RECVFROM;
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
        expected.extend(
            case.expected
                .iter()
                .map(|e| (case.title.clone(), e.clone())),
        );
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
    let replayed: Vec<String> = String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|e| e["Event"] == "INCOMING_REQUEST")
        .map(|e| {
            format!(
                "{} {}",
                e["RequestInMethod"].as_str().unwrap(),
                e["RequestInURL"].as_str().unwrap()
            )
        })
        .collect();
    let wanted: Vec<&String> = expected.iter().map(|(_, e)| e).collect();
    let differ: Vec<_> = expected
        .iter()
        .zip(&replayed)
        .filter(|((_, want), got)| want != *got)
        .collect();
    assert!(
        replayed.len() == wanted.len() && differ.is_empty(),
        "{} heads expected, {} replayed; first differences: {:?}",
        wanted.len(),
        replayed.len(),
        differ.iter().take(5).collect::<Vec<_>>()
    );
}
