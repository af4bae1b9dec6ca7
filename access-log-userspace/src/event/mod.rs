//! Outcomes to events: the model every output format writes (`model`), the API names
//! (`catalog`), the failure taxonomy (`classify`), who called (`identity`: APPLICATION_NAME
//! and END_USER_NAME), MessageIDs (`message_id`), query-string
//! redaction (`redact`), losses gathered into at most one LOST event a second (`loss`), and
//! the builder that puts them together (`build`). Nothing leaves this layer unredacted.
pub mod build;
pub mod catalog;
pub mod classify;
pub mod identity;
pub mod loss;
pub mod message_id;
pub mod model;
pub mod redact;

pub use build::{EventBuilder, EventCounts};
pub use model::{Event, EventKind, Fields, Value};
