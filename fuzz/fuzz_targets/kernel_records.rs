//! Arbitrary bytes as a stream of kernel records (u16 length, then the record), decoded and run
//! through the whole pipeline, the event builder and every output format: no panic, no output
//! line broken, and the pipeline's invariant kept (each request ends exactly once).
#![no_main]

use std::collections::HashMap;

use access_log::{
    event::{catalog::Catalog, redact::Redactor, EventBuilder},
    kernel::{record, Clock},
    pipeline::{Outcome, Pipeline, PipelineConfig},
    sink::{json, kv, pretty},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pipeline = Pipeline::new(PipelineConfig {
        id_headers: vec!["x-request-id".into()],
        noted_headers: vec!["authorization".into()],
        ..PipelineConfig::default()
    });
    let mut outcomes = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let length = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let body = &rest[2..];
        let take = length.min(body.len());
        if let Ok(record) = record::decode(&body[..take]) {
            pipeline.process(&record, &mut outcomes);
        }
        rest = &body[take..];
    }
    pipeline.finish(&mut outcomes);
    let mut ends: HashMap<u64, u32> = HashMap::new();
    let mut incoming = 0;
    for outcome in &outcomes {
        match outcome {
            Outcome::Incoming(_) => incoming += 1,
            Outcome::Ended(ended) => *ends.entry(ended.request.number).or_default() += 1,
            Outcome::Lost(loss) => {
                for number in &loss.requests {
                    *ends.entry(*number).or_default() += 1;
                }
            }
            Outcome::Unreadable { .. } => {}
        }
    }
    assert_eq!(ends.len(), incoming);
    assert!(ends.values().all(|count| *count == 1));
    let mut builder = EventBuilder::new(
        Catalog::default(),
        Clock { offset_ns: 0 },
        Redactor::new(true, &[]),
    );
    let mut line = String::new();
    for outcome in &outcomes {
        let event = builder.event(outcome);
        line.clear();
        kv::line(&event, &mut line);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        line.clear();
        json::line(&event, &mut line);
        assert!(!line.contains('\n'), "{line}");
        line.clear();
        pretty::line(&event, false, &mut line);
        assert!(!line.contains('\n'), "{line}");
    }
});
