//! The HTTP/1 stream reassembler, and the HTTP/2 frame reader beside it, on arbitrary bytes
//! cut into arbitrary reads with arbitrary bytes missing beyond the capture window: no panic,
//! and the bytes HTTP/1 holds stay bounded.
#![no_main]

use std::sync::Arc;

use access_log::protocol::{
    http1::{HeaderInterest, Side, Stream},
    http2,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let side = if control & 1 == 0 {
        Side::Requests
    } else {
        Side::Responses
    };
    let mut stream = Stream::new(side);
    let interest = Arc::new(HeaderInterest {
        values: vec!["x-request-id".into()],
        presence: vec!["authorization".into()],
        keys: vec!["apikey".into()],
    });
    let mut frames = http2::Direction::new(side, interest, control & 4 == 0);
    for _ in 0..(control >> 1) {
        stream.expect_response_to(if control & 2 == 0 { "GET" } else { "HEAD" });
    }
    // Each read: one byte of length (1..=64), then that many bytes; every 7th read is missing
    // bytes beyond the capture window.
    let mut rest = rest;
    let mut index = 0u64;
    while let Some((&length, body)) = rest.split_first() {
        let take = (length as usize % 64 + 1).min(body.len());
        let missing = if index % 7 == 6 { length as u64 * 3 } else { 0 };
        let _ = stream.feed(&body[..take], missing);
        let _ = frames.feed(&body[..take], missing);
        assert!(stream.buffered() <= 64 * 1024 + 64, "{}", stream.buffered());
        rest = &body[take..];
        index += 1;
    }
});
