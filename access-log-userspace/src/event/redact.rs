//! Query-string redaction: the values of credential-like query parameters become `REDACTED`
//! before a URL goes into any event (and so into any output format). Captures are masked in
//! place: credential parameters, and the secret part of credential headers.
use std::{borrow::Cow, sync::Arc};

use crate::protocol::{
    credential::{self, DEFAULT_KEY_HEADERS},
    http2,
};

/// The parameters redacted unless `--no-redact`: names compared without regard to case, after
/// percent-decoding.
pub const DEFAULT_REDACTED: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "key",
    "token",
    "password",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "code",
];

/// What replaces a redacted value.
pub const REDACTED: &str = "REDACTED";

#[derive(Clone, Debug)]
pub struct Redactor {
    /// Lower-case names; empty when redaction is off.
    names: Vec<String>,
    /// Lower-case names of the headers that carry API keys (masked in captures).
    key_headers: Vec<String>,
}

impl Redactor {
    /// The default names and `extra`, or nothing at all when `enabled` is false.
    pub fn new(enabled: bool, extra: &[String]) -> Redactor {
        let names = if enabled {
            DEFAULT_REDACTED
                .iter()
                .map(|n| (*n).to_owned())
                .chain(extra.iter().map(|n| n.to_ascii_lowercase()))
                .collect()
        } else {
            Vec::new()
        };
        Redactor {
            names,
            key_headers: DEFAULT_KEY_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
        }
    }

    /// Also masks these API-key headers in captures.
    pub fn with_key_headers(mut self, extra: &[String]) -> Redactor {
        self.key_headers
            .extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        self
    }

    /// No redaction at all.
    pub fn off() -> Redactor {
        Redactor {
            names: Vec::new(),
            key_headers: Vec::new(),
        }
    }

    /// Masks, in place, the secret part of every credential header line in `bytes` (a captured
    /// call, or a slice of one): a JWT's signature, a Basic password, an opaque token or API
    /// key whole (see [`credential::mask_header_line`]). `inside` says the previous slice of
    /// the same connection ended inside a credential header line, whose rest is masked whole
    /// here; the answer says whether this slice ends inside one. HTTP/2 frames get their
    /// credential fields' values masked in their header blocks ([`http2::mask_sensitive`]).
    pub fn mask_credentials(&self, bytes: &mut [u8], inside: bool) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let sensitive = |name: &[u8]| {
            name.eq_ignore_ascii_case(credential::AUTHORIZATION.as_bytes())
                || self
                    .key_headers
                    .iter()
                    .any(|k| k.as_bytes().eq_ignore_ascii_case(name))
        };
        http2::mask_sensitive(bytes, &sensitive);
        let mut start = 0;
        if inside {
            let end = bytes
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(bytes.len());
            bytes[..end]
                .iter_mut()
                .filter(|b| !b.is_ascii_whitespace())
                .for_each(|b| *b = b'X');
            if end == bytes.len() {
                return true;
            }
            start = end + 1;
        }
        while start < bytes.len() {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| start + p);
            let line_end = end.unwrap_or(bytes.len());
            let credential =
                credential::mask_header_line(&mut bytes[start..line_end], &self.key_headers);
            match end {
                Some(end) => start = end + 1,
                None => return credential,
            }
        }
        false
    }

    fn redacts(&self, name: &str) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let name = percent_decoded(name);
        self.names.iter().any(|n| n.eq_ignore_ascii_case(&name))
    }

    /// A request target (path and query) with the values of redacted parameters replaced;
    /// the same text, not a copy, when there is nothing to redact.
    pub fn target(&self, target: &Arc<str>) -> Arc<str> {
        match self.redact(target) {
            Cow::Borrowed(_) => target.clone(),
            Cow::Owned(text) => Arc::from(text),
        }
    }

    /// `text` with the values of redacted parameters of its query replaced.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.names.is_empty() {
            return Cow::Borrowed(text);
        }
        let Some(query_start) = text.find('?').map(|q| q + 1) else {
            return Cow::Borrowed(text);
        };
        let query_end = text[query_start..]
            .find('#')
            .map_or(text.len(), |f| query_start + f);
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut start = query_start;
        while start <= query_end {
            let end = text[start..query_end]
                .find('&')
                .map_or(query_end, |a| start + a);
            let pair = &text[start..end];
            if let Some((name, value)) = pair.split_once('=') {
                if !value.is_empty() && value != REDACTED && self.redacts(name) {
                    let value_start = start + name.len() + 1;
                    let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    out.push_str(&text[copied..value_start]);
                    out.push_str(REDACTED);
                    copied = end;
                }
            }
            start = end + 1;
        }
        match out {
            Some(mut out) => {
                out.push_str(&text[copied..]);
                Cow::Owned(out)
            }
            None => Cow::Borrowed(text),
        }
    }
}

impl Redactor {
    /// Masks, in place and with `X`s of the same length, the value of every `name=value` of a
    /// redacted name anywhere in `bytes` (a request line, a `Location` or `Referer` header, a
    /// body): a capture's raw bytes keep their framing and lose their credentials.
    pub fn mask(&self, bytes: &mut [u8]) {
        if self.names.is_empty() {
            return;
        }
        let delimiter = |b: u8| b"&?;# \"',<>\r\n\t".contains(&b);
        let mut index = 0;
        while index < bytes.len() {
            if bytes[index] != b'=' {
                index += 1;
                continue;
            }
            let name_start = bytes[..index]
                .iter()
                .rposition(|&b| delimiter(b) || b == b'/' || b == b'=')
                .map_or(0, |p| p + 1);
            let value_end = bytes[index + 1..]
                .iter()
                .position(|&b| delimiter(b))
                .map_or(bytes.len(), |p| index + 1 + p);
            if name_start < index {
                let name = String::from_utf8_lossy(&bytes[name_start..index]).into_owned();
                if self.redacts(&name) {
                    bytes[index + 1..value_end].fill(b'X');
                }
            }
            index = value_end.max(index + 1);
        }
    }
}

/// A parameter name with its %XX escapes (and `+`) decoded, for comparison only.
fn percent_decoded(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', '+']) {
        return Cow::Borrowed(name);
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        index += 3;
                    }
                    None => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> String {
        Redactor::new(true, &["x-sess".to_owned()])
            .redact(text)
            .into_owned()
    }

    #[test]
    fn credential_values_are_replaced_and_the_rest_kept() {
        assert_eq!(
            redact("/api/x?access_token=SECRET123&page=2"),
            "/api/x?access_token=REDACTED&page=2"
        );
        assert_eq!(
            redact("/a?page=1&API_KEY=k1&Token=t&sig=s&code=c&x-sess=9#frag"),
            "/a?page=1&API_KEY=REDACTED&Token=REDACTED&sig=REDACTED&code=REDACTED&x-sess=REDACTED#frag"
        );
        assert_eq!(
            redact("/a?access%5Ftoken=S&key=&token"),
            "/a?access%5Ftoken=REDACTED&key=&token"
        );
        assert_eq!(redact("/a?keys=1&monkey=2"), "/a?keys=1&monkey=2");
        assert_eq!(redact("/token=x/path"), "/token=x/path");
        assert_eq!(redact("/a?password=p%26q=r"), "/a?password=REDACTED");
        // A query cut by the capture window: what came is redacted.
        assert_eq!(redact("/a?secret=abc"), "/a?secret=REDACTED");
    }

    #[test]
    fn a_capture_is_masked_in_place_wherever_a_credential_stands() {
        let redactor = Redactor::new(true, &[]);
        let mut bytes = b"GET /a?access_token=SECRET&page=2&sig=s HTTP/1.1\r\n\
Referer: http://x/?token=T1\r\n\r\n{\"path\":\"/a?api_key=K9\"}"
            .to_vec();
        let length = bytes.len();
        redactor.mask(&mut bytes);
        assert_eq!(bytes.len(), length);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "GET /a?access_token=XXXXXX&page=2&sig=X HTTP/1.1\r\n\
Referer: http://x/?token=XX\r\n\r\n{\"path\":\"/a?api_key=XX\"}"
        );
        let mut other = b"monkey=1&keys=2".to_vec();
        redactor.mask(&mut other);
        assert_eq!(&other[..], b"monkey=1&keys=2");
        let mut off = b"GET /a?token=t HTTP/1.1\r\n".to_vec();
        Redactor::off().mask(&mut off);
        assert_eq!(&off[..], b"GET /a?token=t HTTP/1.1\r\n");
    }

    #[test]
    fn credential_headers_are_masked_across_the_slices_of_a_call() {
        let redactor = Redactor::new(true, &[]).with_key_headers(&["x-secret-key".to_owned()]);
        let mut first =
            b"GET / HTTP/1.1\r\nX-Secret-Key: abc\r\nAuthorization: Bearer tok".to_vec();
        assert!(redactor.mask_credentials(&mut first, false));
        assert_eq!(
            String::from_utf8_lossy(&first),
            "GET / HTTP/1.1\r\nX-Secret-Key: XXX\r\nAuthorization: Bearer XXX"
        );
        // The next slice goes on inside the token: masked up to the line's end.
        let mut second = b"en-rest\r\nAccept: */*\r\n\r\n".to_vec();
        assert!(!redactor.mask_credentials(&mut second, true));
        assert_eq!(
            String::from_utf8_lossy(&second),
            "XXXXXXX\r\nAccept: */*\r\n\r\n"
        );
        let mut off = b"Authorization: Bearer tok\r\n".to_vec();
        assert!(!Redactor::off().mask_credentials(&mut off, false));
        assert_eq!(&off[..], b"Authorization: Bearer tok\r\n");
    }

    #[test]
    fn nothing_to_redact_shares_the_text_and_off_redacts_nothing() {
        let target: Arc<str> = Arc::from("/a?page=1");
        assert!(Arc::ptr_eq(
            &Redactor::new(true, &[]).target(&target),
            &target
        ));
        let secret: Arc<str> = Arc::from("/a?token=s");
        assert_eq!(&*Redactor::off().target(&secret), "/a?token=s");
        assert_eq!(&*Redactor::new(false, &[]).target(&secret), "/a?token=s");
    }
}
