//! Builds the events from a request's state: the seed's fields in the seed's order, then ours.
use std::sync::Arc;

use super::{Attempt, Confidence, InboundRequest};
use crate::{
    catalog::ApiMatch,
    classify::{self, AttemptOutcome, Classification},
    event::{Event, EventKind, Fields},
    http::RequestLine,
};

/// A fresh `urn:uuid:...` MessageID, shared by every event that names it.
pub fn new_message_id() -> Arc<str> {
    let mut buffer = [0u8; uuid::fmt::Urn::LENGTH];
    Arc::from(uuid::Uuid::new_v4().urn().encode_lower(&mut buffer) as &str)
}

/// The fields every event repeats from the incoming request.
fn incoming_fields(request: &InboundRequest, fields: Fields) -> Fields {
    let fields = fields
        .text("RequestInURL", &request.head.target)
        .text("RequestInMethod", request.head.method.clone())
        .optional_text("UserAgent", request.head.user_agent.as_ref())
        .optional_text("RemoteIP", request.remote_ip.as_ref())
        .text("ClientTLS", if request.tls { "true" } else { "false" });
    let fields = if request.head.truncated {
        fields.text("RequestInURLTruncated", "true")
    } else {
        fields
    };
    if request.head.conflicting_framing {
        fields.text("ConflictingLength", "true")
    } else {
        fields
    }
}

fn url(attempt: &Attempt) -> Option<String> {
    let address = attempt.address.as_deref()?;
    let scheme = if attempt.tls { "https://" } else { "http://" };
    let target = attempt.target.as_deref().unwrap_or("");
    let mut url = String::with_capacity(scheme.len() + address.len() + target.len());
    url.push_str(scheme);
    url.push_str(address);
    url.push_str(target);
    Some(url)
}

fn outcome_text(outcome: AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Answered(status) => status.to_string(),
        AttemptOutcome::Connecting | AttemptOutcome::ConnectFailed => "connect-failed".into(),
        AttemptOutcome::Sent | AttemptOutcome::Abandoned => "no-answer".into(),
        AttemptOutcome::Closed => "closed".into(),
        AttemptOutcome::Reset => "reset".into(),
    }
}

/// The attempt count, and with retries each attempt's address and result (like nginx's
/// $upstream_addr and $upstream_status).
fn attempt_fields(request: &InboundRequest, fields: Fields) -> Fields {
    let fields = fields.integer("Attempts", request.attempts.len() as u64);
    if request.attempts.len() < 2 {
        return fields;
    }
    let join = |f: &dyn Fn(&Attempt) -> String| {
        request
            .attempts
            .iter()
            .map(f)
            .collect::<Vec<_>>()
            .join(", ")
    };
    fields
        .text(
            "AttemptAddresses",
            join(&|a| a.address.as_deref().unwrap_or_default().to_owned()),
        )
        .text("AttemptResults", join(&|a| outcome_text(a.outcome)))
}

fn confidence_field(confidence: Option<Confidence>, fields: Fields) -> Fields {
    if confidence == Some(Confidence::Low) {
        fields.text("PairingConfidence", "low")
    } else {
        fields
    }
}

pub fn incoming(request: &InboundRequest, unix_nanos: i128) -> Event {
    let mut fields = Fields::new()
        .text("Event", EventKind::IncomingRequest.as_str())
        .text("MessageID", &request.message_id);
    if !matches!(request.api, ApiMatch::Unknown) {
        fields = fields.text("API", request.api.name());
    }
    Event {
        unix_nanos,
        kind: EventKind::IncomingRequest,
        fields: incoming_fields(request, fields).build(),
    }
}

/// REQUEST_COMPLETE for the attempt at `index`, answered with `status` at `at` (monotonic).
pub fn complete(
    request: &InboundRequest,
    index: usize,
    status: u16,
    at: u64,
    unix_nanos: i128,
) -> Event {
    let attempt = &request.attempts[index];
    let elapsed_ms = at.saturating_sub(request.received_ns) as f64 / 1e6;
    let fields = Fields::new()
        .text("Event", EventKind::RequestComplete.as_str())
        .text("MessageID", new_message_id())
        .text("API", request.api.name())
        .text("ResponseTo", &request.message_id)
        .integer("StatusCode", status.into())
        .optional_text("RequestOutURL", url(attempt))
        .optional_text("RequestOutMethod", attempt.method.clone());
    let fields = incoming_fields(request, fields).millis("ResponseTimeMs", elapsed_ms);
    let fields = attempt_fields(request, fields);
    Event {
        unix_nanos,
        kind: EventKind::RequestComplete,
        fields: confidence_field(Some(attempt.confidence), fields).build(),
    }
}

fn error_event(
    request: &InboundRequest,
    status: Option<u16>,
    class: Classification,
    unix_nanos: i128,
) -> Event {
    let mut fields = Fields::new()
        .text("ErrorSource", class.source)
        .text("Event", EventKind::Error.as_str())
        .text("MessageID", new_message_id());
    if !matches!(request.api, ApiMatch::Unknown) {
        fields = fields.text("API", request.api.name());
    }
    if let Some(status) = status {
        fields = fields.integer("StatusCode", status.into());
    }
    fields = fields
        .text("ERROR_CODE", class.code)
        .text("ERROR_MESSAGE", class.message)
        .text("ResponseTo", &request.message_id);
    fields = incoming_fields(request, fields);
    if let Some(last) = request.attempts.last() {
        fields = attempt_fields(request, fields.optional_text("RequestOutURL", url(last)));
    }
    let confidence = request.attempts.last().map(|a| a.confidence);
    Event {
        unix_nanos,
        kind: EventKind::Error,
        fields: confidence_field(confidence, fields).build(),
    }
}

/// ERROR for a gateway answer that no backend answer preceded; None when it is no error.
pub fn error(request: &InboundRequest, status: u16, unix_nanos: i128) -> Option<Event> {
    let outcomes: Vec<_> = request.attempts.iter().map(|a| a.outcome).collect();
    let class = classify::classify(
        status,
        &outcomes,
        request.head.has_credentials,
        matches!(request.api, ApiMatch::Known(_)),
    )?;
    Some(error_event(request, Some(status), class, unix_nanos))
}

/// ERROR for a request whose client closed the connection before any answer (nginx's 499).
pub fn client_gone(request: &InboundRequest, unix_nanos: i128) -> Event {
    error_event(
        request,
        Some(classify::CLIENT_CLOSED),
        classify::client_gone(),
        unix_nanos,
    )
}

/// ERROR for a pipelined request the gateway never served: an earlier answer ended the
/// connection. Nothing was answered, so there is no StatusCode.
pub fn not_served(request: &InboundRequest, unix_nanos: i128) -> Event {
    error_event(request, None, classify::not_served(), unix_nanos)
}

/// ERROR for a gateway's refusal of bytes that were no readable request: who sent them, what
/// the gateway answered, and the method and URL when the first line was a request line.
pub fn unreadable(
    line: Option<&RequestLine>,
    remote_ip: Option<&Arc<str>>,
    tls: bool,
    status: u16,
    unix_nanos: i128,
) -> Event {
    let class = classify::unreadable();
    let fields = Fields::new()
        .text("ErrorSource", class.source)
        .text("Event", EventKind::Error.as_str())
        .text("MessageID", new_message_id())
        .integer("StatusCode", status.into())
        .text("ERROR_CODE", class.code)
        .text("ERROR_MESSAGE", class.message)
        .optional_text("RequestInURL", line.map(|l| &l.target))
        .optional_text("RequestInMethod", line.map(|l| l.method.clone()))
        .optional_text("RemoteIP", remote_ip)
        .text("ClientTLS", if tls { "true" } else { "false" });
    Event {
        unix_nanos,
        kind: EventKind::Error,
        fields: fields.build(),
    }
}
