//! Who called: APPLICATION_NAME and END_USER_NAME from what a request presented (its
//! [`Credential`], secrets already removed by the protocol layer): a JWT's claims (decoded,
//! never verified: the observer has no keys and trusts the gateway to have checked them), the
//! user of HTTP Basic authentication, or an API key's fingerprint looked up in the key catalog
//! (`--keys FILE`), which lists SHA-256 fingerprints so that no key is stored in clear.
use std::{collections::HashMap, path::Path, sync::Arc};

use base64::Engine as _;
use serde::Deserialize;

use crate::protocol::credential::Credential;

/// Claims that name the application, the first present wins: WSO2 API Manager's own, then
/// OAuth's authorized party and client id.
pub const DEFAULT_APPLICATION_CLAIMS: &[&str] =
    &["http://wso2.org/claims/applicationname", "azp", "client_id"];
/// Claims that name the end user: WSO2 API Manager's own, then the subject.
pub const DEFAULT_USER_CLAIMS: &[&str] = &["http://wso2.org/claims/enduser", "sub"];

/// Longest name kept from a claim or a catalog entry (a longer one is cut, with `…`).
const MAX_NAME: usize = 256;
/// Distinct JWT claim sets remembered, so a client's repeated token is decoded once.
const CACHE: usize = 4096;

/// Who a request says calls; `None` is written `null`, as the WSO2 API Manager access-log
/// format writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub application: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    /// The credential was cut by the capture window: the caller is not known.
    pub cut: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    /// SHA-256 of the key, 64 hex digits (`access-log keys fingerprint` prints it).
    fingerprint: String,
    application: String,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyCatalogError {
    #[error("cannot read key catalog {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key catalog {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

/// API keys by fingerprint: who each one names.
#[derive(Debug, Default)]
pub struct KeyCatalog {
    keys: HashMap<[u8; 32], Caller>,
}

impl KeyCatalog {
    pub fn load(path: &Path) -> Result<KeyCatalog, KeyCatalogError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyCatalogError::Read {
            path: shown.clone(),
            source,
        })?;
        KeyCatalog::parse(&text).map_err(|message| KeyCatalogError::Invalid {
            path: shown,
            message,
        })
    }

    /// A catalog from TOML text: `[[key]]` entries of `fingerprint`, `application` and
    /// optionally `user`.
    pub fn parse(text: &str) -> Result<KeyCatalog, String> {
        let file: KeyFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut keys = HashMap::new();
        for (index, entry) in file.key.into_iter().enumerate() {
            let place = || format!("key {} (fingerprint {:?})", index + 1, entry.fingerprint);
            let fingerprint = parse_fingerprint(&entry.fingerprint).ok_or_else(|| {
                format!(
                    "{}: a fingerprint is 64 hex digits, as `access-log keys fingerprint` prints",
                    place()
                )
            })?;
            if entry.application.trim().is_empty() {
                return Err(format!("{}: the application name is empty", place()));
            }
            let caller = Caller {
                application: Some(name(&entry.application)),
                user: entry.user.as_deref().map(name),
                cut: false,
            };
            if keys.insert(fingerprint, caller).is_some() {
                return Err(format!("{}: listed twice", place()));
            }
        }
        Ok(KeyCatalog { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// 64 hex digits (an optional `sha256:` prefix allowed) as the 32 bytes they spell.
fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(bytes)
}

/// A fingerprint as the catalog writes it: 64 lower-case hex digits.
pub fn fingerprint_hex(fingerprint: &[u8; 32]) -> String {
    fingerprint.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name as events show it: trimmed, at most [`MAX_NAME`] characters.
fn name(text: &str) -> Arc<str> {
    let text = text.trim();
    match text.char_indices().nth(MAX_NAME) {
        Some((end, _)) => Arc::from(format!("{}…", &text[..end])),
        None => Arc::from(text),
    }
}

/// Turns credentials into callers: the claim names to read and the key catalog.
pub struct Identities {
    application_claims: Vec<String>,
    user_claims: Vec<String>,
    keys: KeyCatalog,
    /// Callers of JWT claim sets already decoded.
    decoded: HashMap<Arc<str>, Caller>,
}

impl Default for Identities {
    fn default() -> Self {
        Identities::new(Vec::new(), Vec::new(), KeyCatalog::default())
    }
}

impl Identities {
    /// Empty claim lists take the defaults.
    pub fn new(
        application_claims: Vec<String>,
        user_claims: Vec<String>,
        keys: KeyCatalog,
    ) -> Identities {
        let or_default = |given: Vec<String>, default: &[&str]| {
            if given.is_empty() {
                default.iter().map(|c| (*c).to_owned()).collect()
            } else {
                given
            }
        };
        Identities {
            application_claims: or_default(application_claims, DEFAULT_APPLICATION_CLAIMS),
            user_claims: or_default(user_claims, DEFAULT_USER_CLAIMS),
            keys,
            decoded: HashMap::new(),
        }
    }

    /// Who `credential` names (nobody when there is none, or it names nobody known).
    pub fn caller(&mut self, credential: Option<&Credential>) -> Caller {
        match credential {
            None => Caller::default(),
            Some(Credential::Cut) => Caller {
                cut: true,
                ..Caller::default()
            },
            Some(Credential::BasicUser(user)) => Caller {
                application: None,
                user: Some(name(user)),
                cut: false,
            },
            Some(Credential::Fingerprint(fingerprint)) => {
                self.keys.keys.get(fingerprint).cloned().unwrap_or_default()
            }
            Some(Credential::JwtClaims(claims)) => {
                if let Some(caller) = self.decoded.get(claims) {
                    return caller.clone();
                }
                let caller = self.caller_of_claims(claims);
                if self.decoded.len() >= CACHE {
                    self.decoded.clear();
                }
                self.decoded.insert(claims.clone(), caller.clone());
                caller
            }
        }
    }

    /// The first configured claim of each kind that holds a string or a number.
    fn caller_of_claims(&self, encoded: &str) -> Caller {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let Ok(json) = engine.decode(encoded) else {
            return Caller::default();
        };
        let Ok(claims) =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        else {
            return Caller::default();
        };
        let first = |names: &[String]| {
            names.iter().find_map(|claim| match claims.get(claim)? {
                serde_json::Value::String(text) if !text.trim().is_empty() => Some(name(text)),
                serde_json::Value::Number(number) => Some(name(&number.to_string())),
                _ => None,
            })
        };
        Caller {
            application: first(&self.application_claims),
            user: first(&self.user_claims),
            cut: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::credential::fingerprint;

    fn claims(json: &str) -> Credential {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Credential::JwtClaims(Arc::from(engine.encode(json)))
    }

    #[test]
    fn jwt_claims_name_the_application_and_the_user() {
        let mut identities = Identities::default();
        let caller = identities.caller(Some(&claims(r#"{"sub":"alice","azp":"billing"}"#)));
        assert_eq!(caller.application.as_deref(), Some("billing"));
        assert_eq!(caller.user.as_deref(), Some("alice"));
        // WSO2 API Manager's own claims come first.
        let wso2 = claims(
            r#"{"sub":"admin@carbon.super","client_id":"x",
                "http://wso2.org/claims/applicationname":"DefaultApplication",
                "http://wso2.org/claims/enduser":"bob@carbon.super"}"#,
        );
        let caller = identities.caller(Some(&wso2));
        assert_eq!(caller.application.as_deref(), Some("DefaultApplication"));
        assert_eq!(caller.user.as_deref(), Some("bob@carbon.super"));
        // Decoded once, the same answer again.
        assert_eq!(identities.caller(Some(&wso2)), caller);
    }

    #[test]
    fn configured_claims_replace_the_defaults() {
        let mut identities = Identities::new(
            vec!["app".into()],
            vec!["uid".into()],
            KeyCatalog::default(),
        );
        let caller = identities.caller(Some(&claims(r#"{"sub":"a","app":"shop","uid":42}"#)));
        assert_eq!(caller.application.as_deref(), Some("shop"));
        assert_eq!(caller.user.as_deref(), Some("42"));
    }

    #[test]
    fn nothing_known_is_null_and_undecodable_claims_are_nobody() {
        let mut identities = Identities::default();
        assert_eq!(identities.caller(None), Caller::default());
        let broken = Credential::JwtClaims(Arc::from("!!notbase64"));
        assert_eq!(identities.caller(Some(&broken)), Caller::default());
        assert_eq!(identities.caller(Some(&claims("[1,2]"))), Caller::default());
        assert!(identities.caller(Some(&Credential::Cut)).cut);
        let basic = Credential::BasicUser(Arc::from("carol"));
        assert_eq!(
            identities.caller(Some(&basic)).user.as_deref(),
            Some("carol")
        );
    }

    #[test]
    fn api_keys_are_named_by_their_fingerprint() {
        let hex = fingerprint_hex(&fingerprint(b"k-123"));
        let catalog = KeyCatalog::parse(&format!(
            "[[key]]\nfingerprint = \"{hex}\"\napplication = \"mobile\"\nuser = \"ops\"\n\
             [[key]]\nfingerprint = \"sha256:{}\"\napplication = \"web\"\n",
            fingerprint_hex(&fingerprint(b"other"))
        ))
        .unwrap();
        assert_eq!(catalog.len(), 2);
        let mut identities = Identities::new(Vec::new(), Vec::new(), catalog);
        let caller = identities.caller(Some(&Credential::Fingerprint(fingerprint(b"k-123"))));
        assert_eq!(caller.application.as_deref(), Some("mobile"));
        assert_eq!(caller.user.as_deref(), Some("ops"));
        let unknown = identities.caller(Some(&Credential::Fingerprint(fingerprint(b"nope"))));
        assert_eq!(unknown, Caller::default());
    }

    #[test]
    fn a_bad_key_catalog_says_which_entry() {
        let error =
            KeyCatalog::parse("[[key]]\nfingerprint = \"abc\"\napplication = \"a\"\n").unwrap_err();
        assert!(
            error.contains("key 1") && error.contains("64 hex digits"),
            "{error}"
        );
        let hex = "00".repeat(32);
        let twice = format!(
            "[[key]]\nfingerprint = \"{hex}\"\napplication = \"a\"\n\
             [[key]]\nfingerprint = \"{hex}\"\napplication = \"b\"\n"
        );
        assert!(KeyCatalog::parse(&twice)
            .unwrap_err()
            .contains("listed twice"));
        assert!(KeyCatalog::parse("[[key]]\nfingerprint = 1\n").is_err());
    }
}
