//! Feeds llhttp's HTTP/1 fixtures through the stream reassembler, whole and one byte per read,
//! and checks every head llhttp reports in strict mode: method and URL of requests, status of
//! responses.
use access_log::protocol::http1::{Head, Side, Stream};
use tests::vectors::{self, Case, Kind};

fn describe(heads: &[Head]) -> Vec<String> {
    heads
        .iter()
        .map(|head| match head {
            Head::Request(request) => format!("{} {}", request.method, request.target),
            Head::Response(response) => response.status.to_string(),
            Head::Unreadable(_) => "unreadable".to_owned(),
        })
        .collect()
}

fn run(case: &Case, one_byte_per_read: bool) -> Vec<String> {
    let side = match case.side {
        Kind::Request => Side::Requests,
        Kind::Response => Side::Responses,
    };
    let mut stream = Stream::new(side);
    if side == Side::Responses {
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
    let cases = vectors::load().unwrap_or_else(|e| panic!("{e}"));
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
    assert!(
        failures.is_empty(),
        "{} of {} runs differ:\n{}",
        failures.len(),
        cases.len() * 2,
        failures.join("\n")
    );
}
