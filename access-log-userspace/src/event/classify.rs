//! The failure taxonomy: from what the kernel showed (the gateway's status, whether and how
//! backend calls were attempted, whether credentials were sent) to the WSO2 API Manager
//! access-log format's ErrorSource, ERROR_CODE and ERROR_MESSAGE. README.md documents the same
//! table. Also which headers and query parameters count as credentials.
use crate::{pipeline::AttemptOutcome, protocol::http1::RequestHead};

/// Header names whose presence (never value) marks a request as carrying credentials:
/// Authorization and the default API-key headers (`--api-key-header` adds to both).
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "apikey", "x-api-key", "api-key"];
/// Query parameters that carry credentials (their values are also redacted).
pub const CREDENTIAL_PARAMS: &[&str] = &["api_key", "apikey", "access_token"];

/// Whether a request carried credentials: a credential header, or a credential query parameter.
pub fn carries_credentials(head: &RequestHead) -> bool {
    if head.noted_header {
        return true;
    }
    let Some((_, query)) = head.target.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        CREDENTIAL_PARAMS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    pub source: &'static str,
    pub code: &'static str,
    pub message: &'static str,
}

const fn class(source: &'static str, code: &'static str, message: &'static str) -> Classification {
    Classification {
        source,
        code,
        message,
    }
}

pub const AUTH: &str = "_auth_failure_handler_";
pub const MAIN: &str = "main";
pub const FAULT: &str = "fault";
pub const THROTTLE: &str = "_throttle_out_handler_";

/// The status nginx logs when the client closed the connection before the answer.
pub const CLIENT_CLOSED: u16 = 499;

/// The classification of a request whose client left before any answer.
pub fn client_gone() -> Classification {
    class(
        FAULT,
        "499",
        "Client closed the connection before the response",
    )
}

/// The classification of a pipelined request the gateway dropped: an earlier answer ended the
/// connection (nginx after an error or an HTTP/1.0 answer; nothing is logged by nginx).
pub fn not_served() -> Classification {
    class(
        MAIN,
        "0",
        "Not served: the gateway ended the connection first (an answer that closed it, an \
         HTTP/2 GOAWAY)",
    )
}

/// The classification of a gateway's refusal of bytes that were no readable request.
pub fn unreadable() -> Classification {
    class(MAIN, "400", "Malformed request rejected by the gateway")
}

/// The classification of a request whose connection the gateway closed without an answer
/// (nginx's `return 444`, a timeout it does not answer).
pub fn dropped() -> Classification {
    class(
        FAULT,
        "444",
        "The gateway closed the connection without a response",
    )
}

/// The classification of a request whose gateway process exited before answering.
pub fn gateway_exited() -> Classification {
    class(
        FAULT,
        "101500",
        "The gateway process exited before answering",
    )
}

/// Classifies a gRPC call that ended with a non-zero `grpc-status` (README's table): the
/// gateway's own refusals and faults in the WSO2 API Manager's terms where one fits, else by
/// whose fault the code says it is.
pub fn grpc(code: u32) -> Classification {
    match code {
        1 => class(FAULT, "499", "The client cancelled the call"),
        4 => class(FAULT, "101504", "Connection timed out"),
        5 | 12 => class(
            MAIN,
            "900906",
            "No matching resource found in the API for the given request",
        ),
        7 => class(
            AUTH,
            "900910",
            "The access token does not allow you to access the requested resource",
        ),
        8 => class(THROTTLE, "900800", "Message throttled out"),
        14 => class(FAULT, "101503", "Error connecting to the back end"),
        16 => class(AUTH, "900901", "Invalid Credentials"),
        3 | 6 | 9 | 11 => class(MAIN, "400", "Request rejected by the back end"),
        _ => class(FAULT, "101500", "Error in the back end"),
    }
}

/// Classifies a gateway answer that no backend answer preceded. None when it is no error.
pub fn classify(
    status: u16,
    attempts: &[AttemptOutcome],
    has_credentials: bool,
    api_known: bool,
) -> Option<Classification> {
    if status < 400 {
        return None;
    }
    if let Some(last) = attempts.last() {
        return Some(match (status, last) {
            // A 503 while the backend call is still out (sent; no answer, no close): the
            // gateway gave up waiting, and may close the connection only after answering
            // (Varnish's first_byte_timeout, whose fetch thread closes it).
            (504, _) | (_, AttemptOutcome::Abandoned) | (503, AttemptOutcome::Sent) => {
                class(FAULT, "101504", "Connection timed out")
            }
            (_, AttemptOutcome::ConnectFailed | AttemptOutcome::Connecting) => {
                class(FAULT, "101503", "Error connecting to the back end")
            }
            (_, AttemptOutcome::Closed | AttemptOutcome::Sent) => {
                class(FAULT, "101505", "Connection closed by the back end")
            }
            (_, AttemptOutcome::Reset) => {
                class(FAULT, "101505", "Connection reset by the back end")
            }
            (_, AttemptOutcome::Answered(_)) => class(
                FAULT,
                "101500",
                "Error in the gateway after the back end answered",
            ),
        });
    }
    Some(match status {
        401 | 407 if has_credentials => class(AUTH, "900901", "Invalid Credentials"),
        401 | 407 => class(AUTH, "900902", "Missing Credentials"),
        403 if has_credentials => class(
            AUTH,
            "900910",
            "The access token does not allow you to access the requested resource",
        ),
        403 => class(AUTH, "900902", "Missing Credentials"),
        404 if api_known => class(
            MAIN,
            "900906",
            "No matching resource found in the API for the given request",
        ),
        404 => class(MAIN, "404", "No API matches the request"),
        429 => class(THROTTLE, "900800", "Message throttled out"),
        502 | 503 => class(FAULT, "101503", "Error connecting to the back end"),
        504 => class(FAULT, "101504", "Connection timed out"),
        500..=599 => class(FAULT, "101500", "Gateway error without a back-end call"),
        _ => class(MAIN, "400", "Request rejected by the gateway"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table() {
        let none: &[AttemptOutcome] = &[];
        assert_eq!(classify(200, none, false, true), None);
        assert_eq!(classify(401, none, false, true).unwrap().code, "900902");
        assert_eq!(classify(401, none, true, true).unwrap().code, "900901");
        assert_eq!(classify(403, none, true, true).unwrap().code, "900910");
        let not_found = classify(404, none, false, false).unwrap();
        assert_eq!((not_found.source, not_found.code), (MAIN, "404"));
        assert_eq!(classify(404, none, false, true).unwrap().code, "900906");
        let refused = classify(502, &[AttemptOutcome::ConnectFailed], false, true).unwrap();
        assert_eq!((refused.source, refused.code), (FAULT, "101503"));
        let closed = classify(502, &[AttemptOutcome::Closed], false, true).unwrap();
        assert_eq!(closed.code, "101505");
        let timeout = classify(504, &[AttemptOutcome::Sent], false, true).unwrap();
        assert_eq!(timeout.code, "101504");
        let given_up = classify(503, &[AttemptOutcome::Sent], false, true).unwrap();
        assert_eq!(given_up.code, "101504");
        let unanswered = classify(502, &[AttemptOutcome::Sent], false, true).unwrap();
        assert_eq!(unanswered.code, "101505");
    }

    #[test]
    fn the_documented_grpc_table() {
        let row = |code| {
            let class = grpc(code);
            (class.source, class.code)
        };
        assert_eq!(row(1), (FAULT, "499"));
        assert_eq!(row(4), (FAULT, "101504"));
        assert_eq!(row(5), (MAIN, "900906"));
        assert_eq!(row(12), (MAIN, "900906"));
        assert_eq!(row(7), (AUTH, "900910"));
        assert_eq!(row(8), (THROTTLE, "900800"));
        assert_eq!(row(14), (FAULT, "101503"));
        assert_eq!(row(16), (AUTH, "900901"));
        for client_side in [3, 6, 9, 11] {
            assert_eq!(row(client_side), (MAIN, "400"));
        }
        for server_side in [2, 10, 13, 15, 99] {
            assert_eq!(row(server_side), (FAULT, "101500"));
        }
    }
}
