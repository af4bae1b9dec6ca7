//! Who called, on a real nginx: a JWT made here, an HTTP Basic user and a catalogued API key
//! give APPLICATION_NAME and END_USER_NAME on the events that end their requests (over HTTP/1.1
//! and HTTP/2, on answers and on the gateway's refusals, with a token longer than the capture
//! window), and the token, the password and the key appear in no output: events in every
//! format, the capture file, its replay, standard error.
use std::{fs, process::Command, thread, time::Duration};

use base64::Engine as _;
use serde_json::Value;
use tests::{
    backend::Backend,
    curl, free_port,
    gateway::Gateway,
    observer::{assert_every_request_ends_once, binary, Attached, Observer},
    require_root,
};

const KEY: &str = "key-7f3a9c-SECRET-apikey";
const PASSWORD: &str = "pw-SECRET-42";
const SIGNATURE: &str = "c2lnbmF0dXJlLVNFQ1JFVC1qd3Q";

/// A JWT with these claims (HS256 header; the signature is made up: the observer never
/// verifies one).
fn jwt(claims: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{SIGNATURE}",
        engine.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        engine.encode(claims)
    )
}

/// The key catalog's fingerprint of `key`, from the command that operators use.
fn fingerprint(key: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(binary())
        .args(["keys", "fingerprint"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running access-log keys fingerprint");
    // As an operator types it: with echo's final newline.
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains(KEY));
    text.trim().to_owned()
}

/// The event that ended the request for `url` (by its RequestInURL).
fn ending<'e>(events: &'e [Value], url: &str) -> &'e Value {
    events
        .iter()
        .find(|e| {
            e["RequestInURL"] == url && (e["Event"] == "REQUEST_COMPLETE" || e["Event"] == "ERROR")
        })
        .unwrap_or_else(|| panic!("no ending for {url} in {events:#?}"))
}

fn caller(event: &Value) -> (Value, Value) {
    (
        event["APPLICATION_NAME"].clone(),
        event["END_USER_NAME"].clone(),
    )
}

fn named(application: Option<&str>, user: Option<&str>) -> (Value, Value) {
    let value = |v: Option<&str>| v.map_or(Value::Null, |v| Value::String(v.to_owned()));
    (value(application), value(user))
}

#[test]
fn jwt_claims_basic_users_and_catalogued_keys_name_the_caller_and_no_secret_is_written() {
    require_root();
    let backend = Backend::start().expect("a backend");
    let (port, h2_port) = (free_port(), free_port());
    let block = format!(
        "  server {{\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{h2_port} http2;\n    \
         large_client_header_buffers 4 16k;\n    \
         location /api/ {{ proxy_pass http://127.0.0.1:{}; }}\n    \
         location /deny/ {{ return 401; }}\n  }}\n",
        backend.port()
    );
    let gateway = Gateway::nginx("identity", 1, &block, port).expect("starting nginx");
    let dir = gateway.dir.clone();
    let keys = dir.join("keys.toml");
    fs::write(
        &keys,
        format!(
            "[[key]]\nfingerprint = \"{}\"\napplication = \"mobile-app\"\nuser = \"ops-team\"\n",
            fingerprint(KEY)
        ),
    )
    .unwrap();
    let (kv, pretty, capture) = (
        dir.join("events.kv"),
        dir.join("events.pretty"),
        dir.join("capture.alrec"),
    );
    let pid = gateway.master_pid().to_string();
    let keys_arg = keys.to_str().unwrap();
    let observer =
        Observer::attach(gateway.master_pid(), &["--keys", keys_arg]).expect("attaching");
    let start_extra = |args: &[&str]| {
        let mut command = Command::new(binary());
        command.args(args).stdout(std::process::Stdio::null());
        Attached::start(command, false).expect("attaching")
    };
    // This one copies 4 KiB of each read: the 4 KB token is read whole.
    let mut others = vec![start_extra(&[
        "attach",
        "--capture-bytes",
        "4096",
        "--pid",
        &pid,
        "--keys",
        keys_arg,
        "--format",
        "kv",
        "--output",
        kv.to_str().unwrap(),
        "--save-records",
        capture.to_str().unwrap(),
    ])];
    others.push(start_extra(&[
        "attach",
        "--pid",
        &pid,
        "--keys",
        keys_arg,
        "--format",
        "pretty",
        "--output",
        pretty.to_str().unwrap(),
    ]));

    let token = jwt(r#"{"sub":"alice@example.com","azp":"billing-app","scope":"read"}"#);
    // A token of 1.5 KB, as identity providers issue them: past the 1,024-byte capture window,
    // nginx reads the head in two pieces (1 KB, then the rest), each captured.
    let long_token = jwt(&format!(
        r#"{{"sub":"dora","client_id":"reports","pad":"{}"}}"#,
        "p".repeat(1000)
    ));
    // A 4 KB token: the second read's window cuts it.
    let huge_token = jwt(&format!(
        r#"{{"sub":"erin","client_id":"archive","pad":"{}"}}"#,
        "p".repeat(3000)
    ));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("bob:{PASSWORD}"));
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let basic_header = format!("Authorization: Basic {basic}");
    let key_header = format!("apikey: {KEY}");
    let requests: [(&str, Vec<String>, u16); 8] = [
        ("/api/jwt", vec!["-H".into(), bearer(&token)], 200),
        ("/api/long-jwt", vec!["-H".into(), bearer(&long_token)], 200),
        ("/api/huge-jwt", vec!["-H".into(), bearer(&huge_token)], 200),
        ("/api/basic", vec!["-H".into(), basic_header.clone()], 200),
        ("/api/key", vec!["-H".into(), key_header.clone()], 200),
        (
            "/api/unknown-key",
            vec!["-H".into(), "x-api-key: not-listed".into()],
            200,
        ),
        ("/api/nobody", vec![], 200),
        ("/deny/jwt", vec!["-H".into(), bearer(&token)], 401),
    ];
    for (path, headers, status) in &requests {
        let mut args: Vec<&str> = headers.iter().map(String::as_str).collect();
        let target = url(path);
        args.push(&target);
        assert_eq!(curl(&args), vec![*status], "{path}");
    }
    let h2_target = format!("http://127.0.0.1:{h2_port}/api/h2-jwt");
    assert_eq!(
        curl(&["--http2-prior-knowledge", "-H", &bearer(&token), &h2_target]),
        vec![200]
    );
    let count = requests.len() + 1;
    observer.wait_ended(count);
    thread::sleep(Duration::from_millis(300));
    let stderr: Vec<String> = others
        .into_iter()
        .map(|o| o.stop().expect("stopping").join("\n"))
        .collect();
    let (events, observer_stderr) = observer.stop();
    assert_every_request_ends_once(&events);

    let alice = named(Some("billing-app"), Some("alice@example.com"));
    assert_eq!(caller(ending(&events, "/api/jwt")), alice);
    assert_eq!(caller(ending(&events, "/api/h2-jwt")), alice);
    let long = ending(&events, "/api/long-jwt");
    assert_eq!(caller(long), named(Some("reports"), Some("dora")), "{long}");
    // Cut: said so, and nobody named.
    let huge = ending(&events, "/api/huge-jwt");
    assert_eq!(caller(huge), named(None, None), "{huge}");
    assert_eq!(huge["IdentityCut"], "true", "{huge}");
    assert_eq!(
        caller(ending(&events, "/api/basic")),
        named(None, Some("bob"))
    );
    assert_eq!(
        caller(ending(&events, "/api/key")),
        named(Some("mobile-app"), Some("ops-team"))
    );
    assert_eq!(
        caller(ending(&events, "/api/unknown-key")),
        named(None, None)
    );
    assert_eq!(caller(ending(&events, "/api/nobody")), named(None, None));
    // The gateway's refusal names who presented the token (its claims, never verified).
    let refused = ending(&events, "/deny/jwt");
    assert_eq!(refused["Event"], "ERROR", "{refused}");
    assert_eq!(caller(refused), alice);
    // INCOMING_REQUEST is written before anything is known of the caller, as in the WSO2 API
    // Manager access-log format.
    assert!(events
        .iter()
        .filter(|e| e["Event"] == "INCOMING_REQUEST")
        .all(|e| e.get("APPLICATION_NAME").is_none()));

    let replayed = Command::new(binary())
        .args(["replay", "--format", "json", "--keys", keys_arg])
        .arg(&capture)
        .output()
        .expect("replaying");
    assert!(replayed.status.success(), "{replayed:?}");
    let replayed_text = String::from_utf8_lossy(&replayed.stdout).into_owned();
    let replayed_events: Vec<Value> = replayed_text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // A capture keeps claims and users (signatures and passwords masked), never keys.
    assert_eq!(caller(ending(&replayed_events, "/api/jwt")), alice);
    assert_eq!(
        caller(ending(&replayed_events, "/api/basic")),
        named(None, Some("bob"))
    );
    assert_eq!(
        caller(ending(&replayed_events, "/api/key")),
        named(None, None)
    );
    // Over HTTP/2 the whole authorization value is masked in the capture (the token is
    // Huffman-coded there, so it would not show as text: the replay shows it was masked).
    assert_eq!(
        caller(ending(&replayed_events, "/api/h2-jwt")),
        named(None, None)
    );

    let kv_text = fs::read_to_string(&kv).unwrap();
    assert!(
        kv_text.contains("APPLICATION_NAME=\"billing-app\", END_USER_NAME=\"alice@example.com\""),
        "{kv_text}"
    );
    assert!(kv_text.contains("APPLICATION_NAME=\"null\""), "{kv_text}");
    assert!(
        kv_text.contains("APPLICATION_NAME=\"archive\", END_USER_NAME=\"erin\""),
        "{kv_text}"
    );
    let texts = [
        (
            "json",
            events.iter().map(Value::to_string).collect::<String>(),
        ),
        ("kv", kv_text),
        ("pretty", fs::read_to_string(&pretty).unwrap()),
        (
            "capture file",
            String::from_utf8_lossy(&fs::read(&capture).unwrap()).into_owned(),
        ),
        ("replay", replayed_text),
        (
            "stderr",
            format!("{}\n{observer_stderr}", stderr.join("\n")),
        ),
    ];
    let secrets = [
        ("the token", token.as_str()),
        ("the long token", long_token.as_str()),
        ("the 4 KB token", huge_token.as_str()),
        ("the JWT signature", SIGNATURE),
        ("the Basic credentials", basic.as_str()),
        ("the password", PASSWORD),
        ("the API key", KEY),
    ];
    for (name, text) in &texts {
        assert!(!text.is_empty(), "{name} is empty");
        for (secret_name, secret) in secrets {
            assert!(!text.contains(secret), "{name} holds {secret_name}");
        }
    }
    drop(backend);
}
