//! The gateway configurations of the accuracy run: every planned route on nginx and on Apache
//! httpd, each logging its own ground truth.
use super::{
    truth::{APACHE_TRUTH_FORMAT, NGINX_TRUTH_FORMAT},
    RIGHT_KEY,
};

pub fn nginx_block(dir: &std::path::Path, port: u16, one: u16, two: u16, dead: u16) -> String {
    let key = RIGHT_KEY;
    let pooled = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    format!(
        r#"
  log_format truth '{NGINX_TRUTH_FORMAT}';
  upstream pool {{ server 127.0.0.1:{one}; server 127.0.0.1:{two}; keepalive 32; }}
  upstream retry {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{one} max_fails=0; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    access_log {dir}/truth.log truth;
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
"#,
        dir = dir.display()
    )
}

pub fn apache_body(dir: &std::path::Path, one: u16, two: u16, dead: u16) -> String {
    format!(
        r#"
LogFormat "{APACHE_TRUTH_FORMAT}" truth
CustomLog {dir}/truth.log truth
KeepAlive On
MaxKeepAliveRequests 0
RewriteEngine On
RewriteCond %{{HTTP:apikey}} ^$
RewriteRule ^/auth/ - [R=401,L]
RewriteCond %{{HTTP:apikey}} !^{RIGHT_KEY}$
RewriteRule ^/auth/ - [R=401,L]
<Proxy balancer://pool>
  BalancerMember http://127.0.0.1:{one}
  BalancerMember http://127.0.0.1:{two}
</Proxy>
ProxyPass /pool/ balancer://pool/v1/pool/
ProxyPass /auth/ http://127.0.0.1:{one}/v1/auth/
ProxyPass /fresh/ http://127.0.0.1:{two}/v2/fresh/ disablereuse=On
ProxyPass /down/ http://127.0.0.1:{dead}/ retry=0
ProxyPass /slow/ http://127.0.0.1:{one}/ timeout=1
"#,
        dir = dir.display()
    )
}
