//! Feeds llhttp's HTTP/1 fixtures (../shared/vectors/llhttp, read in place, never copied) through
//! the stream reassembler, whole and one byte per read, and checks every head llhttp reports
//! in strict mode: method and URL of requests, status of responses.
use std::path::{Path, PathBuf};

use access_log::http::{Head, Side, Stream};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/llhttp")
}

#[derive(Debug)]
struct Case {
    file: String,
    title: String,
    side: Side,
    raw: Vec<u8>,
    /// (method, url) for requests, status for responses, in order.
    expected: Vec<String>,
}

/// Lines join with CRLF, as on the wire, except after a line ending in `\` (a continuation);
/// `\r`, `\n`, `\t` and `\xHH` escapes are bytes.
fn wire_bytes(block: &str) -> Vec<u8> {
    let mut joined = String::new();
    let lines: Vec<&str> = block.split('\n').collect();
    for (index, line) in lines.iter().enumerate() {
        match line.strip_suffix('\\') {
            Some(continued) if !continued.ends_with('\\') => joined.push_str(continued),
            _ => {
                joined.push_str(line);
                if index + 1 < lines.len() {
                    joined.push_str("\r\n");
                }
            }
        }
    }
    let mut out = Vec::new();
    let bytes = joined.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 1 < bytes.len() {
            match bytes[index + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'x' if index + 3 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[index + 2..index + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    index += 4;
                    continue;
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
            index += 2;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    out
}

fn span(line: &str, name: &str) -> Option<String> {
    let marker = format!("span[{name}]=\"");
    let start = line.find(&marker)? + marker.len();
    Some(line[start..line.len() - 1].to_owned())
}

fn parse_file(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut cases = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines().peekable();
    let mut side = None;
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix("## ") {
            title = heading.to_owned();
        } else if line.starts_with("<!-- meta=") {
            // Strict cases only: lenient modes and special harness types are llhttp options.
            let meta: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            side = if meta.contains("skipBody") {
                None
            } else if meta.contains("\"type\":\"request\"") {
                Some(Side::Requests)
            } else if meta.contains("\"type\":\"response\"") {
                Some(Side::Responses)
            } else {
                None
            };
        } else if line.starts_with("```http") {
            let mut block = Vec::new();
            for body in lines.by_ref() {
                if body.starts_with("```") {
                    break;
                }
                block.push(body);
            }
            while lines.peek().is_some_and(|l| !l.starts_with("```log")) {
                lines.next();
            }
            lines.next();
            let mut log = Vec::new();
            for entry in lines.by_ref() {
                if entry.starts_with("```") {
                    break;
                }
                log.push(entry.to_owned());
            }
            let Some(case_side) = side.take() else {
                continue;
            };
            let errors = log.iter().any(|l| l.contains(" error code="));
            let not_http = log
                .iter()
                .filter_map(|l| span(l, "protocol"))
                .any(|p| p != "HTTP");
            // HTTP/0.9 (no version, or 0.x) is not HTTP/1 and not followed.
            let http09 = !log
                .iter()
                .any(|l| span(l, "version").is_some_and(|v| !v.starts_with("0.")));
            if errors || not_http || http09 {
                continue;
            }
            let mut expected = Vec::new();
            let mut method = String::new();
            let mut url = String::new();
            for entry in &log {
                if let Some(m) = span(entry, "method") {
                    method.push_str(&m);
                }
                if let Some(u) = span(entry, "url") {
                    url.push_str(&u);
                }
                if let Some(rest) = entry.split(" headers complete ").nth(1) {
                    match case_side {
                        Side::Requests => expected.push(format!(
                            "{} {}",
                            std::mem::take(&mut method),
                            std::mem::take(&mut url)
                        )),
                        Side::Responses => {
                            let status = rest.split("status=").nth(1).unwrap_or("");
                            expected.push(status.split(' ').next().unwrap_or("").to_owned());
                        }
                    }
                }
            }
            cases.push(Case {
                file: file.clone(),
                title: title.clone(),
                side: case_side,
                raw: wire_bytes(&block.join("\n")),
                expected,
            });
        }
    }
    cases
}

fn describe(heads: &[Head]) -> Vec<String> {
    heads
        .iter()
        .map(|head| match head {
            Head::Request(request) => format!("{} {}", request.method, request.target),
            Head::Response(response) => response.status.to_string(),
        })
        .collect()
}

fn run(case: &Case, one_byte_per_read: bool) -> Vec<String> {
    let mut stream = Stream::new(case.side);
    if case.side == Side::Responses {
        for _ in 0..case.expected.len().max(1) {
            stream.expect_response_to("GET");
        }
    }
    let mut heads = Vec::new();
    if one_byte_per_read {
        for byte in &case.raw {
            heads.extend(stream.feed(std::slice::from_ref(byte), 0));
        }
    } else {
        heads.extend(stream.feed(&case.raw, 0));
    }
    describe(&heads)
}

#[test]
fn llhttp_strict_fixtures_give_the_same_heads() {
    let dir = vectors_dir();
    if !dir.is_dir() {
        eprintln!(
            "llhttp vectors not found at {}: this test needs ../shared/vectors beside the project",
            dir.display()
        );
        panic!("test vectors missing at {}", dir.display());
    }
    let mut cases = Vec::new();
    for side in ["request", "response"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(side))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            cases.extend(parse_file(&file));
        }
    }
    assert!(cases.len() > 100, "only {} strict cases found", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        for one_byte in [false, true] {
            let got = run(case, one_byte);
            if got != case.expected {
                failures.push(format!(
                    "{} / {} (one byte per read: {one_byte}): expected {:?}, got {:?}",
                    case.file, case.title, case.expected, got
                ));
            }
        }
    }
    eprintln!("{} strict llhttp cases checked", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} runs differ:\n{}",
        failures.len(),
        cases.len() * 2,
        failures.join("\n")
    );
}
