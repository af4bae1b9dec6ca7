//! Arbitrary bytes as a stream of kernel records (u16 length, then the record), decoded and run
//! through the whole pipeline and every output format: no panic, no output line broken.
#![no_main]

use access_log::{
    catalog::Catalog,
    format::{json_line, kv_line},
    pipeline::{Clock, Pipeline, PipelineConfig},
    record,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pipeline = Pipeline::new(PipelineConfig {
        catalog: Catalog::default(),
        clock: Clock { offset_ns: 0 },
        id_headers: vec!["x-request-id".into()],
    });
    let mut events = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let length = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let body = &rest[2..];
        let take = length.min(body.len());
        if let Ok(record) = record::decode(&body[..take]) {
            pipeline.process(&record, &mut events);
        }
        rest = &body[take..];
    }
    let mut line = String::new();
    for event in &events {
        line.clear();
        kv_line(event, &mut line);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        line.clear();
        json_line(event, &mut line);
        assert!(!line.contains('\n'), "{line}");
    }
});
