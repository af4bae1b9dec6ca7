//! Each gateway's configuration for the accuracy run: the routes it serves (see
//! [`super::routes`]) in front of two backends and a port where nothing listens.
use super::{truth::NGINX_TRUTH_FORMAT, RIGHT_KEY};
use crate::gateway::{Gateway, Kind};

/// The backends' ports.
pub struct Backends {
    pub one: u16,
    pub two: u16,
    /// Nothing listens there.
    pub dead: u16,
}

/// The gateway of `kind` on `port` (nginx also speaks HTTP/2 with prior knowledge on
/// `http2_port`).
pub fn start(
    kind: Kind,
    port: u16,
    http2_port: u16,
    backends: &Backends,
) -> Result<Gateway, String> {
    match kind {
        Kind::Nginx => Gateway::nginx("accuracy", 2, &nginx(port, http2_port, backends), port),
        Kind::Apache => Gateway::apache("accuracy", &apache(backends), port),
        Kind::Haproxy => Gateway::haproxy("accuracy", 2, &haproxy(port, backends), port),
        Kind::Caddy => Gateway::caddy("accuracy", &caddy(port, backends), port),
        Kind::Varnish => Gateway::varnish("accuracy", &varnish(backends), port),
    }
}

fn nginx(port: u16, http2_port: u16, Backends { one, two, dead }: &Backends) -> String {
    let key = RIGHT_KEY;
    let pooled = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    format!(
        r#"
  log_format truth '{NGINX_TRUTH_FORMAT}';
  upstream pool {{ server 127.0.0.1:{one}; server 127.0.0.1:{two}; keepalive 32; }}
  upstream retry {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{one} max_fails=0; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    listen 127.0.0.1:{http2_port} http2 backlog=1024;
    access_log logs/truth.log truth;
    keepalive_requests 100000;
    location /pool/ {{ proxy_pass http://pool/v1/pool/; {pooled} }}
    location /fresh/ {{ proxy_pass http://127.0.0.1:{two}/v2/fresh/; }}
    location /rewrite/ {{ rewrite ^ /fixed? break; proxy_pass http://pool; {pooled} }}
    location /retry/ {{ proxy_pass http://retry; proxy_next_upstream error; }}
    location /down/ {{ proxy_pass http://127.0.0.1:{dead}; }}
    location /slow/ {{ proxy_pass http://127.0.0.1:{one}; proxy_read_timeout 1s; }}
    location /auth/ {{
      if ($http_apikey = "") {{ return 401; }}
      if ($http_apikey != "{key}") {{ return 401; }}
      proxy_pass http://pool; {pooled}
    }}
    location / {{ return 404; }}
  }}
"#
    )
}

fn apache(Backends { one, two, dead }: &Backends) -> String {
    format!(
        r#"
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60
RewriteEngine On
RewriteCond %{{HTTP:apikey}} ^$
RewriteRule ^/auth/ - [R=401,L]
RewriteCond %{{HTTP:apikey}} !^{RIGHT_KEY}$
RewriteRule ^/auth/ - [R=401,L]
RewriteRule ^/nothing/ - [R=404,L]
<Proxy balancer://pool>
  BalancerMember http://127.0.0.1:{one}
  BalancerMember http://127.0.0.1:{two}
</Proxy>
ProxyPass /pool/ balancer://pool/v1/pool/
ProxyPass /auth/ http://127.0.0.1:{one}/v1/auth/
ProxyPass /fresh/ http://127.0.0.1:{two}/v2/fresh/ disablereuse=On
ProxyPass /down/ http://127.0.0.1:{dead}/ retry=0
ProxyPass /slow/ http://127.0.0.1:{one}/ timeout=1
"#
    )
}

fn haproxy(port: u16, Backends { one, two, dead }: &Backends) -> String {
    format!(
        r#"
frontend gateway
  bind 127.0.0.1:{port}
  http-request return status 401 if {{ path_beg /auth/ }} !{{ req.hdr(apikey) -m found }}
  http-request return status 401 if {{ path_beg /auth/ }} !{{ req.hdr(apikey) -m str {RIGHT_KEY} }}
  use_backend pool if {{ path_beg /pool/ }}
  use_backend fresh if {{ path_beg /fresh/ }}
  use_backend down if {{ path_beg /down/ }}
  use_backend slow if {{ path_beg /slow/ }}
  use_backend auth if {{ path_beg /auth/ }}
  default_backend nothing
backend nothing
  http-request return status 404
backend pool
  balance roundrobin
  http-reuse always
  http-request replace-path /pool/(.*) /v1/pool/\1
  server one 127.0.0.1:{one}
  server two 127.0.0.1:{two}
backend fresh
  option http-server-close
  http-request replace-path /fresh/(.*) /v2/fresh/\1
  server two 127.0.0.1:{two}
backend down
  retries 0
  server dead 127.0.0.1:{dead}
backend slow
  timeout server 1s
  server one 127.0.0.1:{one}
backend auth
  server one 127.0.0.1:{one}
"#
    )
}

fn caddy(port: u16, Backends { one, two, dead }: &Backends) -> String {
    format!(
        r#"
http://:{port} {{
  route {{
    @noauth {{
      path /auth/*
      not header apikey {RIGHT_KEY}
    }}
    respond @noauth 401
    handle /pool/* {{
      rewrite * /v1{{uri}}
      reverse_proxy 127.0.0.1:{one} 127.0.0.1:{two} {{
        lb_policy round_robin
      }}
    }}
    handle /fresh/* {{
      reverse_proxy 127.0.0.1:{two} {{
        transport http {{
          keepalive off
        }}
      }}
    }}
    handle /down/* {{
      reverse_proxy 127.0.0.1:{dead}
    }}
    handle /slow/* {{
      reverse_proxy 127.0.0.1:{one} {{
        transport http {{
          response_header_timeout 1s
        }}
      }}
    }}
    handle /auth/* {{
      reverse_proxy 127.0.0.1:{one}
    }}
    respond 404
  }}
}}
"#
    )
}

fn varnish(Backends { one, two, dead }: &Backends) -> String {
    format!(
        r#"vcl 4.1;
import directors;
backend one {{ .host = "127.0.0.1"; .port = "{one}"; }}
backend two {{ .host = "127.0.0.1"; .port = "{two}"; }}
backend dead {{ .host = "127.0.0.1"; .port = "{dead}"; }}
backend slow {{ .host = "127.0.0.1"; .port = "{one}"; .first_byte_timeout = 1s; }}
sub vcl_init {{
  new pool = directors.round_robin();
  pool.add_backend(one);
  pool.add_backend(two);
}}
sub vcl_recv {{
  if (req.url ~ "^/auth/") {{
    if (req.http.apikey != "{RIGHT_KEY}") {{ return (synth(401)); }}
    set req.backend_hint = one;
    return (pass);
  }}
  if (req.url ~ "^/pool/") {{
    set req.backend_hint = pool.backend();
    set req.url = "/v1" + req.url;
    return (pass);
  }}
  if (req.url ~ "^/fresh/") {{ set req.backend_hint = two; return (pass); }}
  if (req.url ~ "^/down/") {{ set req.backend_hint = dead; return (pass); }}
  if (req.url ~ "^/slow/") {{ set req.backend_hint = slow; return (pass); }}
  return (synth(404));
}}
sub vcl_backend_fetch {{
  if (bereq.url ~ "^/fresh/") {{ set bereq.http.Connection = "close"; }}
}}
"#
    )
}
