//! The API catalog (`--apis FILE`): names the API a request is for by the longest context that
//! prefixes its path, rendered as the WSO2 API Manager access-log format does
//! (`provider--Name:version`).
use std::{path::Path, sync::Arc};

use serde::Deserialize;

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiEntry {
    pub name: String,
    pub version: String,
    pub context: String,
    #[serde(default)]
    pub provider: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    api: Vec<ApiEntry>,
}

/// Why a catalog's text is not a valid catalog.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidCatalog(String);

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read API catalog {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API catalog {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

/// What the catalog says of a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiMatch {
    /// A catalog entry's context prefixes the path.
    Known(Arc<str>),
    /// The catalog has no entry for the path: the gateway has no such API.
    Unknown,
    /// No catalog: the name is the path's first segment (documented fallback).
    Guessed(Arc<str>),
}

impl ApiMatch {
    /// The name as event text (empty when the catalog has no such API).
    pub fn name(&self) -> Arc<str> {
        match self {
            ApiMatch::Known(name) | ApiMatch::Guessed(name) => name.clone(),
            ApiMatch::Unknown => Arc::from(""),
        }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    /// Entries sorted by context length, longest first, with their rendered names.
    entries: Vec<(ApiEntry, Arc<str>)>,
    loaded: bool,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: shown.clone(),
            source,
        })?;
        Catalog::parse(&text).map_err(|InvalidCatalog(message)| CatalogError::Invalid {
            path: shown,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Catalog, InvalidCatalog> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|e| InvalidCatalog(e.message().to_owned()))?;
        for entry in &file.api {
            if !entry.context.starts_with('/') {
                return Err(InvalidCatalog(format!(
                    "API {:?}: context {:?} must start with '/'",
                    entry.name, entry.context
                )));
            }
        }
        let mut entries: Vec<_> = file
            .api
            .into_iter()
            .map(|entry| {
                let name = Arc::from(render(&entry));
                (entry, name)
            })
            .collect();
        entries.sort_by_key(|(e, _)| std::cmp::Reverse(e.context.trim_end_matches('/').len()));
        Ok(Catalog {
            entries,
            loaded: true,
        })
    }

    /// Names the API for a request target (path and query).
    pub fn lookup(&self, target: &str) -> ApiMatch {
        let path = target.split(['?', '#']).next().unwrap_or_default();
        if !self.loaded {
            let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
            return ApiMatch::Guessed(Arc::from(first));
        }
        self.entries
            .iter()
            .find(|(entry, _)| context_matches(&entry.context, path))
            .map(|(_, name)| ApiMatch::Known(name.clone()))
            .unwrap_or(ApiMatch::Unknown)
    }
}

/// A context matches the path itself or any path below it, never a longer sibling
/// (`/echo` matches `/echo` and `/echo/x`, not `/echoes`).
fn context_matches(context: &str, path: &str) -> bool {
    let context = context.trim_end_matches('/');
    match path.strip_prefix(context) {
        Some(rest) => context.is_empty() || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn render(entry: &ApiEntry) -> String {
    match &entry.provider {
        Some(provider) => format!("{provider}--{}:{}", entry.name, entry.version),
        None => format!("{}:{}", entry.name, entry.version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
        [[api]]
        name = "Echo"
        version = "v1.0.0"
        context = "/echo"
        provider = "lzelus"

        [[api]]
        name = "EchoAdmin"
        version = "v2"
        context = "/echo/admin/"
    "#;

    #[test]
    fn longest_context_wins_and_renders_like_the_api_manager() {
        let catalog = Catalog::parse(CATALOG).unwrap();
        assert_eq!(
            catalog.lookup("/echo/1.0.0/noauth?x=1"),
            ApiMatch::Known("lzelus--Echo:v1.0.0".into())
        );
        assert_eq!(
            catalog.lookup("/echo/admin/users"),
            ApiMatch::Known("EchoAdmin:v2".into())
        );
        assert_eq!(catalog.lookup("/echoes"), ApiMatch::Unknown);
        assert_eq!(catalog.lookup("/my-api"), ApiMatch::Unknown);
    }

    #[test]
    fn without_a_catalog_the_first_segment_names_the_api() {
        let catalog = Catalog::default();
        assert_eq!(
            catalog.lookup("/orders/1?x=2"),
            ApiMatch::Guessed("orders".into())
        );
    }

    #[test]
    fn invalid_catalogs_say_why() {
        assert!(Catalog::parse("[[api]]\nname = 1").is_err());
        let err = Catalog::parse("[[api]]\nname='a'\nversion='1'\ncontext='x'").unwrap_err();
        assert!(err.to_string().contains("must start with '/'"), "{err}");
    }
}
