//! access-log's user-space library, laid out as the pipeline a byte travels: `kernel` (load,
//! attach, drain, decode; capture files) → `protocol` (one direction of a connection's bytes
//! to heads) → `pipeline` (heads to requests and their outcomes) → `event` (outcomes to
//! events) → `sink` (events to the world); `report` reads the events back and answers
//! questions over them. `command` holds the subcommands around it; the `access-log` binary
//! (src/main.rs) is the command line.
pub mod command;
pub mod event;
pub mod kernel;
pub mod pipeline;
pub mod protocol;
pub mod report;
pub mod sink;
pub mod text;
