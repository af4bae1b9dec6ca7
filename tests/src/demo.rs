//! The demo gateway's configuration, shared by `cargo xtask demo` and the end-to-end tests: three
//! APIs under their contexts (one behind an API key, one whose backend is down) and the
//! catalog that names them.
use std::fmt::Write as _;

/// The API catalog for [`nginx_http_block`].
pub const CATALOG: &str = r#"# The demo gateway's APIs (access-log --apis).
[[api]]
name = "Orders"
version = "v1"
context = "/orders"
provider = "demo"

[[api]]
name = "Inventory"
version = "v2"
context = "/inventory"
provider = "demo"

[[api]]
name = "Legacy"
version = "v0"
context = "/legacy"
provider = "demo"
"#;

/// The API key the /inventory/ API accepts.
pub const API_KEY: &str = "demo-key";

/// nginx `http {}` contents: `/orders/` through a keep-alive pool with a path rewrite,
/// `/inventory/` behind an `apikey` header, `/legacy/` to a port where nothing listens, 404
/// for anything else.
pub fn nginx_http_block(
    port: u16,
    orders_backend: u16,
    inventory_backend: u16,
    dead: u16,
) -> String {
    let mut block = String::new();
    let _ = write!(
        block,
        r#"
  upstream orders {{ server 127.0.0.1:{orders_backend}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location /orders/ {{
      proxy_pass http://orders/v1/orders/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /inventory/ {{
      if ($http_apikey = "") {{ return 401; }}
      if ($http_apikey != "{API_KEY}") {{ return 401; }}
      proxy_pass http://127.0.0.1:{inventory_backend}/stock/;
    }}
    location /legacy/ {{
      proxy_pass http://127.0.0.1:{dead}/;
    }}
    location / {{ return 404; }}
  }}
"#
    );
    block
}
