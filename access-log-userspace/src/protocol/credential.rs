//! What a request presents as its credentials, reduced as it is parsed to what may be kept: the
//! claims segment of a JWT (its signature dropped), the user of HTTP Basic authentication (its
//! password dropped), or the SHA-256 fingerprint of an opaque key or token. No secret leaves
//! this module; the event layer turns these into APPLICATION_NAME and END_USER_NAME.
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The header that carries tokens and Basic credentials.
pub const AUTHORIZATION: &str = "authorization";
/// Headers that carry API keys unless told otherwise (WSO2 API Manager's and Kong's `apikey`,
/// AWS API Gateway's `x-api-key`).
pub const DEFAULT_KEY_HEADERS: &[&str] = &["apikey", "x-api-key", "api-key"];

/// A request's credential, secret-free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A bearer JWT's claims segment as sent (base64url JSON); its header and signature are
    /// not kept, so what is kept is no usable token.
    JwtClaims(Arc<str>),
    /// The user name of HTTP Basic authentication.
    BasicUser(Arc<str>),
    /// SHA-256 of an API key, or of a bearer token that is no JWT.
    Fingerprint([u8; 32]),
    /// The credential header's value was cut by the capture window: who called is not known.
    Cut,
}

/// SHA-256 of a key as sent (surrounding whitespace trimmed): what the key catalog lists.
pub fn fingerprint(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key.trim_ascii()).into()
}

/// The credential of one header, if `name` (lower-case or not) is Authorization or one of
/// `key_headers` (lower-case) and its value says who calls. Authorization: `Bearer` with a
/// JWT or an opaque token, `Basic`; other schemes are not read.
pub fn from_header(name: &[u8], value: &[u8], key_headers: &[String]) -> Option<Credential> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    if name.eq_ignore_ascii_case(AUTHORIZATION.as_bytes()) {
        let split = value.iter().position(|&b| b == b' ')?;
        let (scheme, rest) = (&value[..split], value[split..].trim_ascii());
        if rest.is_empty() {
            return None;
        }
        if scheme.eq_ignore_ascii_case(b"bearer") {
            return Some(bearer(rest));
        }
        if scheme.eq_ignore_ascii_case(b"basic") {
            return basic_user(rest).map(Credential::BasicUser);
        }
        return None;
    }
    key_headers
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(name))
        .then(|| Credential::Fingerprint(fingerprint(value)))
}

/// A JWT (three base64url segments, the first a JSON object) keeps its claims; any other
/// token its fingerprint.
fn bearer(token: &[u8]) -> Credential {
    let mut segments = token.split(|&b| b == b'.');
    let (Some(header), Some(claims), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Credential::Fingerprint(fingerprint(token));
    };
    let base64url = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    // A JWT's header is `{"...`, which base64url-encodes to `eyJ`.
    if header.starts_with(b"eyJ") && base64url(header) && base64url(claims) {
        // Only base64url bytes: ASCII.
        Credential::JwtClaims(Arc::from(String::from_utf8_lossy(claims).as_ref()))
    } else {
        Credential::Fingerprint(fingerprint(token))
    }
}

/// The user of `base64(user:password)`; the password is dropped here.
fn basic_user(encoded: &[u8]) -> Option<Arc<str>> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8_lossy(&decoded[..colon]);
    (!user.is_empty()).then(|| Arc::from(user.as_ref()))
}

/// Masks, in place and keeping every length, the secret part of a credential header in a
/// captured head: a JWT's signature, a Basic password (re-encoded so the user stays
/// readable), an opaque token or API key whole. `line` is one header line without its line
/// end; returns whether it was a credential header.
pub fn mask_header_line(line: &mut [u8], key_headers: &[String]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii();
    let is_authorization = name.eq_ignore_ascii_case(AUTHORIZATION.as_bytes());
    let is_key = key_headers
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(name));
    if !is_authorization && !is_key {
        return false;
    }
    let value = &mut line[colon + 1..];
    if is_key {
        mask_all(value);
        return true;
    }
    let start = value.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else { return true };
    let value = &mut value[start..];
    let Some(split) = value.iter().position(|&b| b == b' ') else {
        mask_all(value);
        return true;
    };
    let (scheme, rest) = value.split_at_mut(split);
    if scheme.eq_ignore_ascii_case(b"basic") {
        mask_basic_password(rest);
    } else if scheme.eq_ignore_ascii_case(b"bearer")
        && matches!(bearer(rest.trim_ascii()), Credential::JwtClaims(_))
    {
        // The claims stay; the signature, which makes it a token, goes.
        let last_dot = rest.iter().rposition(|&b| b == b'.').unwrap_or(0);
        mask_all(&mut rest[last_dot + 1..]);
    } else {
        mask_all(rest);
    }
    true
}

fn mask_all(bytes: &mut [u8]) {
    for byte in bytes {
        if !byte.is_ascii_whitespace() {
            *byte = b'X';
        }
    }
}

/// `user:password` in base64 becomes `user:XXXX` in base64 of the same length; anything that
/// does not decode is masked whole.
fn mask_basic_password(encoded: &mut [u8]) {
    let engine = base64::engine::general_purpose::STANDARD;
    let start = encoded
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(encoded.len());
    let end = encoded
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    let text = &mut encoded[start..end];
    let Ok(mut decoded) = engine.decode(&*text) else {
        mask_all(text);
        return;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        mask_all(text);
        return;
    };
    decoded[colon + 1..].fill(b'X');
    let again = engine.encode(&decoded);
    if again.len() == text.len() {
        text.copy_from_slice(again.as_bytes());
    } else {
        mask_all(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        vec!["apikey".into(), "x-api-key".into()]
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    #[test]
    fn a_bearer_jwt_keeps_its_claims_only() {
        let credential = from_header(b"Authorization", format!("Bearer {JWT}").as_bytes(), &[]);
        assert_eq!(
            credential,
            Some(Credential::JwtClaims(Arc::from("eyJzdWIiOiJhbGljZSJ9")))
        );
    }

    #[test]
    fn an_opaque_token_and_an_api_key_are_fingerprinted() {
        let token = from_header(b"authorization", b"bearer abc.def", &[]);
        assert_eq!(
            token,
            Some(Credential::Fingerprint(fingerprint(b"abc.def")))
        );
        let key = from_header(b"X-API-Key", b"  k-123 \t", &keys());
        assert_eq!(key, Some(Credential::Fingerprint(fingerprint(b"k-123"))));
        // SHA-256("abc"), FIPS 180-2's example.
        assert_eq!(
            fingerprint(b"abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "{:x?}",
            fingerprint(b"abc")
        );
        assert_eq!(from_header(b"x-other", b"k", &keys()), None);
    }

    #[test]
    fn basic_gives_the_user_and_never_the_password() {
        // alice:s3cret
        let credential = from_header(b"authorization", b"Basic YWxpY2U6czNjcmV0", &[]);
        assert_eq!(credential, Some(Credential::BasicUser(Arc::from("alice"))));
        assert_eq!(from_header(b"authorization", b"Basic !!!", &[]), None);
        assert_eq!(
            from_header(b"authorization", b"Digest username=\"a\"", &[]),
            None
        );
        assert_eq!(from_header(b"authorization", b"Bearer", &[]), None);
    }

    #[test]
    fn a_captured_head_keeps_claims_and_users_and_loses_every_secret() {
        let mut line = format!("Authorization: Bearer {JWT}").into_bytes();
        assert!(mask_header_line(&mut line, &keys()));
        assert_eq!(
            String::from_utf8_lossy(&line),
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.XXXXXXXXXXXX"
        );
        let mut basic = b"authorization: Basic YWxpY2U6czNjcmV0".to_vec();
        assert!(mask_header_line(&mut basic, &keys()));
        let masked = String::from_utf8_lossy(&basic).into_owned();
        assert_eq!(masked.len(), "authorization: Basic YWxpY2U6czNjcmV0".len());
        let encoded = masked.rsplit(' ').next().unwrap();
        assert_eq!(basic_user(encoded.as_bytes()).as_deref(), Some("alice"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, b"alice:XXXXXX");
        let mut key = b"apikey: k-123".to_vec();
        assert!(mask_header_line(&mut key, &keys()));
        assert_eq!(&key[..], b"apikey: XXXXX");
        let mut opaque = b"Authorization: Bearer opaque-token".to_vec();
        mask_header_line(&mut opaque, &keys());
        assert_eq!(&opaque[..], b"Authorization: Bearer XXXXXXXXXXXX");
        let mut other = b"Accept: */*".to_vec();
        assert!(!mask_header_line(&mut other, &keys()));
        assert_eq!(&other[..], b"Accept: */*");
    }
}
