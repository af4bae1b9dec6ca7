//! The demo gateway's configuration, shared by `cargo xtask demo` and the end-to-end tests: the
//! files under `demo/` (three APIs under their contexts, one behind an API key, one whose
//! backend is down; the demo's nginx backends; the catalog that names the APIs), with their
//! placeholders filled.

/// The API catalog for [`nginx_http_block`] (`demo/apis.toml`).
pub const CATALOG: &str = include_str!("../../demo/apis.toml");

/// The API key the /inventory/ API accepts.
pub const API_KEY: &str = "demo-key";

const GATEWAY_TEMPLATE: &str = include_str!("../../demo/gateway.conf.template");
const BACKEND_TEMPLATE: &str = include_str!("../../demo/backend.conf.template");

/// The catalog's path in the repository, for `access-log attach --apis`.
pub fn catalog_path() -> std::path::PathBuf {
    crate::workspace_root().join("demo/apis.toml")
}

/// nginx `http {}` contents of the gateway (`demo/gateway.conf.template`): `/orders/` through a
/// keep-alive pool to `orders_backend` with a path rewrite, `/inventory/` behind an `apikey`
/// header to `inventory_backend`, `/legacy/` to `dead` where nothing listens, 404 for anything
/// else.
pub fn nginx_http_block(
    port: u16,
    orders_backend: u16,
    inventory_backend: u16,
    dead: u16,
) -> String {
    fill(
        GATEWAY_TEMPLATE,
        &[
            ("PORT", &port.to_string()),
            ("ORDERS", &orders_backend.to_string()),
            ("INVENTORY", &inventory_backend.to_string()),
            ("DEAD", &dead.to_string()),
            ("API_KEY", API_KEY),
        ],
    )
}

/// nginx `http {}` contents of the demo's backends (`demo/backend.conf.template`): small JSON
/// answers on `orders` and `inventory`.
pub fn backend_http_block(orders: u16, inventory: u16) -> String {
    fill(
        BACKEND_TEMPLATE,
        &[
            ("ORDERS", &orders.to_string()),
            ("INVENTORY", &inventory.to_string()),
        ],
    )
}

/// Replaces each `@NAME@` of `template`; every placeholder must be known.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_owned();
    for (name, value) in values {
        text = text.replace(&format!("@{name}@"), value);
    }
    for (at, _) in text.match_indices('@') {
        let rest = &text[at + 1..];
        let name = rest.find('@').map_or("", |end| &rest[..end]);
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            panic!("demo template placeholder @{name}@ has no value");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        let gateway = nginx_http_block(1, 2, 3, 4);
        assert!(gateway.contains("listen 127.0.0.1:1;"));
        assert!(gateway.contains("server 127.0.0.1:2; keepalive 16;"));
        assert!(gateway.contains("proxy_pass http://127.0.0.1:3/stock/;"));
        assert!(gateway.contains("proxy_pass http://127.0.0.1:4/;"));
        assert!(gateway.contains(&format!("!= \"{API_KEY}\"")));
        let backend = backend_http_block(5, 6);
        assert!(backend.contains("listen 127.0.0.1:5;") && backend.contains("listen 127.0.0.1:6;"));
        assert!(CATALOG.contains("context = \"/orders\""));
    }

    #[test]
    #[should_panic(expected = "@NOPE@")]
    fn unknown_placeholders_are_caught() {
        fill("a @NOPE@ b", &[]);
    }
}
