//! Outcomes to events: the WSO2 API Manager access-log format's fields in its order, then
//! ours. Names the API (catalog), classifies failures (classify), names requests and events
//! (message_id), says who called (identity), and redacts URLs (redact) before any value
//! leaves this module.
use std::sync::Arc;

use super::{
    catalog::{ApiMatch, Catalog},
    classify::{self, Classification},
    identity::{Caller, Identities},
    loss::LossReport,
    message_id::MessageIds,
    model::{Event, EventKind, Fields},
    redact::Redactor,
};
use crate::{
    kernel::Clock,
    pipeline::{Attempt, AttemptOutcome, Confidence, Ended, Ending, Loss, Outcome, Request},
    protocol::http1::RequestLine,
    text::Text,
};

/// What the events said, for the summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventCounts {
    pub incoming: u64,
    pub complete: u64,
    /// REQUEST_COMPLETE events for answers the gateway gave itself (below 400).
    pub answered_by_gateway: u64,
    pub errors: u64,
    pub lost: u64,
    /// Requests named in LOST events.
    pub requests_lost: u64,
    /// Ending events whose pairing rests on weak evidence (PairingConfidence="low").
    pub low_confidence: u64,
}

pub struct EventBuilder {
    catalog: Catalog,
    clock: Clock,
    redactor: Redactor,
    ids: MessageIds,
    identities: Identities,
    counts: EventCounts,
}

impl EventBuilder {
    pub fn new(catalog: Catalog, clock: Clock, redactor: Redactor) -> EventBuilder {
        EventBuilder {
            catalog,
            clock,
            redactor,
            ids: MessageIds::new(),
            identities: Identities::default(),
            counts: EventCounts::default(),
        }
    }

    /// Names callers with these claims and this key catalog.
    pub fn with_identities(mut self, identities: Identities) -> Self {
        self.identities = identities;
        self
    }

    /// APPLICATION_NAME and END_USER_NAME (`null` when unknown), and `IdentityCut` when the
    /// credential was cut by the capture window.
    fn caller_fields(&mut self, request: &Request, fields: Fields) -> Fields {
        let Caller {
            application,
            user,
            cut,
        } = self.identities.caller(request.head.credential.as_ref());
        let fields = fields
            .text_or_null("APPLICATION_NAME", application)
            .text_or_null("END_USER_NAME", user);
        if cut {
            fields.text("IdentityCut", "true")
        } else {
            fields
        }
    }

    pub fn counts(&self) -> &EventCounts {
        &self.counts
    }

    /// The event for one outcome.
    pub fn event(&mut self, outcome: &Outcome) -> Event {
        match outcome {
            Outcome::Incoming(request) => self.incoming(request),
            Outcome::Ended(ended) => self.ended(ended),
            Outcome::Unreadable {
                line,
                remote_ip,
                tls,
                status,
                at,
            } => self.unreadable(line.as_ref(), remote_ip.as_ref(), *tls, *status, *at),
            Outcome::Lost(loss) => self.lost(loss),
        }
    }

    /// The fields every event repeats from the incoming request.
    fn incoming_fields(&self, request: &Request, fields: Fields) -> Fields {
        let fields = fields
            .text("RequestInURL", self.redactor.target(&request.head.target))
            .text("RequestInMethod", &request.head.method)
            .optional_text("UserAgent", request.head.user_agent.as_ref())
            .optional_text("RemoteIP", request.remote_ip.as_ref())
            .text("ClientTLS", if request.tls { "true" } else { "false" })
            .integer("GatewayPID", request.process.into());
        let fields = if request.head.truncated {
            fields.text("RequestInURLTruncated", "true")
        } else {
            fields
        };
        let fields = if request.head.headers_unknown {
            fields.text("HeadersUnknown", "true")
        } else {
            fields
        };
        if request.head.conflicting_framing {
            fields.text("ConflictingLength", "true")
        } else {
            fields
        }
    }

    fn incoming(&mut self, request: &Request) -> Event {
        self.counts.incoming += 1;
        let mut fields = Fields::new()
            .text("Event", EventKind::IncomingRequest.as_str())
            .text("MessageID", self.ids.request(request.number));
        let api = self.catalog.lookup(&request.head.target);
        if !matches!(api, ApiMatch::Unknown) {
            fields = fields.text("API", api.name());
        }
        Event {
            unix_nanos: self.clock.wall(request.received_ns),
            kind: EventKind::IncomingRequest,
            fields: self.incoming_fields(request, fields).build(),
        }
    }

    /// The backend URL of an attempt: scheme, backend and target as sent (nginx's notation
    /// for a unix socket: `http://unix:/run/app.sock:/path`).
    fn url(&self, attempt: &Attempt) -> Option<String> {
        let backend = attempt.backend.as_deref()?;
        let scheme = if attempt.tls { "https://" } else { "http://" };
        let target = attempt
            .target
            .as_ref()
            .map(|t| self.redactor.target(t))
            .unwrap_or_else(|| Arc::from(""));
        let mut url = String::with_capacity(scheme.len() + backend.len() + target.len() + 1);
        url.push_str(scheme);
        url.push_str(backend);
        if attempt.unix {
            url.push(':');
        }
        url.push_str(&target);
        Some(url)
    }

    fn ended(&mut self, ended: &Ended) -> Event {
        let request = &ended.request;
        let unix_nanos = self.clock.wall(ended.at);
        let api = self.catalog.lookup(&request.head.target);
        let shown = ended.shown_attempt();
        let confidence = shown.map(|a| a.confidence);
        if confidence == Some(Confidence::Low) {
            self.counts.low_confidence += 1;
        }
        let elapsed_ms = ended.at.saturating_sub(request.received_ns) as f64 / 1e6;
        if let Some(grpc) = ended.grpc.as_ref().filter(|g| g.code != 0) {
            // The call failed whatever the HTTP status said.
            let status = match ended.ending {
                Ending::Backend { status, .. } | Ending::Gateway { status } => Some(status),
                _ => None,
            };
            return self.error(ended, &api, status, classify::grpc(grpc.code), unix_nanos);
        }
        let (status, class) = match ended.ending {
            Ending::Backend { status, .. } => {
                return self.complete(ended, &api, status, false, elapsed_ms, unix_nanos);
            }
            Ending::Gateway { status } => {
                let outcomes: Vec<AttemptOutcome> =
                    ended.attempts.iter().map(|a| a.outcome).collect();
                match classify::classify(
                    status,
                    &outcomes,
                    classify::carries_credentials(&request.head),
                    matches!(api, ApiMatch::Known(_)),
                ) {
                    Some(class) => (Some(status), class),
                    None => {
                        return self.complete(ended, &api, status, true, elapsed_ms, unix_nanos)
                    }
                }
            }
            Ending::ClientGone => (Some(classify::CLIENT_CLOSED), classify::client_gone()),
            Ending::NotServed => (None, classify::not_served()),
            Ending::Dropped => (None, classify::dropped()),
            Ending::GatewayExited => (None, classify::gateway_exited()),
        };
        self.error(ended, &api, status, class, unix_nanos)
    }

    /// REQUEST_COMPLETE: the backend's answer, or (`by_gateway`) an answer below 400 the
    /// gateway gave itself.
    fn complete(
        &mut self,
        ended: &Ended,
        api: &ApiMatch,
        status: u16,
        by_gateway: bool,
        elapsed_ms: f64,
        unix_nanos: i128,
    ) -> Event {
        self.counts.complete += 1;
        let request = &ended.request;
        let fields = Fields::new()
            .text("Event", EventKind::RequestComplete.as_str())
            .text("MessageID", self.ids.event())
            .text("API", api.name())
            .text("ResponseTo", self.ids.request(request.number));
        let mut fields = self
            .caller_fields(request, fields)
            .integer("StatusCode", status.into());
        if by_gateway {
            self.counts.answered_by_gateway += 1;
            fields = fields.text("AnsweredBy", "gateway");
        } else if let Some(attempt) = ended.shown_attempt() {
            fields = fields
                .optional_text("RequestOutURL", self.url(attempt))
                .optional_text("RequestOutMethod", attempt.method.as_ref());
        }
        let fields = self
            .incoming_fields(request, fields)
            .millis("ResponseTimeMs", elapsed_ms);
        let fields = grpc_fields(ended, attempt_fields(&ended.attempts, fields));
        Event {
            unix_nanos,
            kind: EventKind::RequestComplete,
            fields: confidence_field(ended.shown_attempt(), fields).build(),
        }
    }

    fn error(
        &mut self,
        ended: &Ended,
        api: &ApiMatch,
        status: Option<u16>,
        class: Classification,
        unix_nanos: i128,
    ) -> Event {
        self.counts.errors += 1;
        let request = &ended.request;
        let mut fields = Fields::new()
            .text("ErrorSource", class.source)
            .text("Event", EventKind::Error.as_str())
            .text("MessageID", self.ids.event());
        if !matches!(api, ApiMatch::Unknown) {
            fields = fields.text("API", api.name());
        }
        if let Some(status) = status {
            fields = fields.integer("StatusCode", status.into());
        }
        fields = fields
            .text("ERROR_CODE", class.code)
            .text("ERROR_MESSAGE", class.message)
            .text("ResponseTo", self.ids.request(request.number));
        fields = self.caller_fields(request, fields);
        fields = self.incoming_fields(request, fields);
        if let Some(last) = ended.attempts.last() {
            fields = attempt_fields(
                &ended.attempts,
                fields.optional_text("RequestOutURL", self.url(last)),
            );
        }
        let fields = grpc_fields(ended, fields);
        Event {
            unix_nanos,
            kind: EventKind::Error,
            fields: confidence_field(ended.attempts.last(), fields).build(),
        }
    }

    /// ERROR for a gateway's refusal of bytes that were no readable request: who sent them,
    /// what the gateway answered, and the method and URL when the first line was a request
    /// line.
    fn unreadable(
        &mut self,
        line: Option<&RequestLine>,
        remote_ip: Option<&Arc<str>>,
        tls: bool,
        status: u16,
        at: u64,
    ) -> Event {
        self.counts.errors += 1;
        let class = classify::unreadable();
        let fields = Fields::new()
            .text("ErrorSource", class.source)
            .text("Event", EventKind::Error.as_str())
            .text("MessageID", self.ids.event())
            .integer("StatusCode", status.into())
            .text("ERROR_CODE", class.code)
            .text("ERROR_MESSAGE", class.message)
            .optional_text(
                "RequestInURL",
                line.map(|l| self.redactor.target(&l.target)),
            )
            .optional_text("RequestInMethod", line.map(|l| l.method.clone()))
            .optional_text("RemoteIP", remote_ip)
            .text("ClientTLS", if tls { "true" } else { "false" });
        Event {
            unix_nanos: self.clock.wall(at),
            kind: EventKind::Error,
            fields: fields.build(),
        }
    }

    /// LOST: why, how many records, and the MessageIDs of the requests it ends.
    fn lost(&mut self, loss: &Loss) -> Event {
        self.loss_report(&LossReport::from(loss))
    }

    /// The LOST event of everything lost since the previous one (see [`super::loss`]).
    pub fn loss_report(&mut self, report: &LossReport) -> Event {
        self.counts.lost += 1;
        self.counts.requests_lost += report.requests.len() as u64;
        let ids: Vec<Arc<str>> = report
            .requests
            .iter()
            .map(|n| self.ids.request(*n))
            .collect();
        let mut fields = Fields::new()
            .text("Event", EventKind::Lost.as_str())
            .text("MessageID", self.ids.event())
            .text("Reason", report.reasons.join(", "));
        if report.records > 0 {
            fields = fields.integer("RecordsLost", report.records);
        }
        fields = fields.integer("RequestsLost", report.requests.len() as u64);
        if !ids.is_empty() {
            fields = fields.text("RequestIDs", ids.join(","));
        }
        if !report.connections.is_empty() {
            let connections: Vec<String> = report
                .connections
                .iter()
                .map(|(process, fd)| format!("{process}:{fd}"))
                .collect();
            fields = fields.text("Connections", connections.join(","));
        }
        if report.undecodable > 0 {
            fields = fields.integer("UndecodableRecords", report.undecodable);
        }
        if report.not_captured > 0 {
            fields = fields.integer("NotCaptured", report.not_captured);
        }
        Event {
            unix_nanos: self.clock.wall(report.at),
            kind: EventKind::Lost,
            fields: fields.build(),
        }
    }
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

/// The attempt count, and with retries each attempt's backend and result (like nginx's
/// $upstream_addr and $upstream_status).
fn attempt_fields(attempts: &[Attempt], fields: Fields) -> Fields {
    let fields = fields.integer("Attempts", attempts.len() as u64);
    if attempts.len() < 2 {
        return fields;
    }
    let join = |f: &dyn Fn(&Attempt) -> String| attempts.iter().map(f).collect::<Vec<_>>();
    fields
        .text(
            "AttemptAddresses",
            join(&|a| a.backend.as_deref().unwrap_or_default().to_owned()).join(", "),
        )
        .text(
            "AttemptResults",
            join(&|a| outcome_text(a.outcome)).join(", "),
        )
}

fn confidence_field(attempt: Option<&Attempt>, fields: Fields) -> Fields {
    if attempt.is_some_and(|a| a.confidence == Confidence::Low) {
        fields.text("PairingConfidence", "low")
    } else {
        fields
    }
}

/// A gRPC call's outcome: `GrpcStatus` (its code) and `GrpcMessage` (when the trailers had
/// one).
fn grpc_fields(ended: &Ended, fields: Fields) -> Fields {
    match &ended.grpc {
        Some(grpc) => fields
            .integer("GrpcStatus", grpc.code.into())
            .optional_text("GrpcMessage", grpc.message.clone().map(Text::from)),
        None => fields,
    }
}
