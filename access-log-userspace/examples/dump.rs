//! Prints a capture file's records one per line, for a developer reading what the kernel saw:
//! `cargo run --release --example dump -- capture.alrec`.
use std::{fs::File, io::BufReader};

use access_log::kernel::{
    capture_file::{Entry, Reader},
    record::{decode, Record},
};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: dump FILE"))?;
    let mut reader = Reader::new(BufReader::new(File::open(&path)?))?;
    while let Some(entry) = reader.next_entry()? {
        match entry {
            Entry::Clock(clock) => println!("clock {}", clock.offset_ns),
            Entry::Existing {
                key,
                direction,
                remote,
            } => println!("existing {key:?} {direction:?} {remote:?}"),
            Entry::Peer { key, remote } => println!("peer {key:?} {remote}"),
            Entry::Record(bytes) => match decode(&bytes) {
                Ok(record) => {
                    let h = record.header();
                    let what = match &record {
                        Record::Data {
                            moved,
                            offset,
                            captured,
                            ..
                        } => {
                            let text = String::from_utf8_lossy(captured);
                            let token = text
                                .lines()
                                .find_map(|l| l.strip_prefix("X-Token: "))
                                .or_else(|| text.lines().find_map(|l| l.strip_prefix("x-token: ")))
                                .unwrap_or("");
                            let first = text.lines().next().unwrap_or("");
                            format!(
                                "data call {} moved {moved} off {offset} [{first}] token {token}",
                                h.call
                            )
                        }
                        Record::Accept { remote, .. } => format!("accept {remote:?}"),
                        Record::Connect {
                            remote,
                            result,
                            repeated,
                            ..
                        } => format!("connect {remote:?} {result} repeated {repeated}"),
                        Record::Close { tcp_state, .. } => format!("close state {tcp_state}"),
                        Record::Shutdown { .. } => "shutdown".into(),
                        Record::Exit { .. } => "exit".into(),
                        Record::Wake { woken, .. } => format!("wake {woken}"),
                        Record::GoCall { connection, .. } => {
                            format!(
                                "go call {} g {:#x} conn {connection:#x}",
                                h.call, h.goroutine
                            )
                        }
                    };
                    println!(
                        "{} {}/{} fd {} lost {} g {:#x} {what}",
                        h.timestamp_ns, h.tgid, h.tid, h.fd, h.lost_before, h.goroutine
                    );
                }
                Err(error) => println!("undecodable: {error}"),
            },
        }
    }
    Ok(())
}
