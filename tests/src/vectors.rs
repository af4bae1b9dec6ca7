//! llhttp's HTTP/1 test fixtures (../shared/vectors/llhttp, read in place, never copied):
//! the strict cases, as raw wire bytes and the heads llhttp reports (method and URL of each
//! request, status of each response).
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// Where the llhttp fixtures are: `../shared/vectors/llhttp` beside the project.
pub fn vectors_dir() -> PathBuf {
    crate::workspace_root().join("../shared/vectors/llhttp")
}

#[derive(Debug, Clone)]
pub struct Case {
    pub file: String,
    pub title: String,
    pub side: Kind,
    pub raw: Vec<u8>,
    /// (method, url) for requests, status for responses, in order.
    pub expected: Vec<String>,
    /// llhttp's strict mode (no lenient flags) applies.
    pub strict: bool,
    /// llhttp reports an error: the bytes are malformed (in its mode).
    pub rejected: bool,
}

/// Lines join with CRLF, as on the wire, except after a line ending in `\` (a continuation);
/// `\r`, `\n`, `\t` and `\xHH` escapes are bytes.
pub fn wire_bytes(block: &str) -> Vec<u8> {
    let mut joined = String::new();
    let lines: Vec<&str> = block.split('\n').collect();
    for (index, line) in lines.iter().enumerate() {
        match line.strip_suffix('\\') {
            Some(continued) if !continued.ends_with('\\') => joined.push_str(continued),
            _ => {
                joined.push_str(line);
                if index + 1 < lines.len() {
                    joined.push_str("\r\n");
                }
            }
        }
    }
    let mut out = Vec::new();
    let bytes = joined.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 1 < bytes.len() {
            match bytes[index + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'x' if index + 3 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[index + 2..index + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    index += 4;
                    continue;
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
            index += 2;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    out
}

fn span(line: &str, name: &str) -> Option<String> {
    let marker = format!("span[{name}]=\"");
    let start = line.find(&marker)? + marker.len();
    Some(line[start..line.len() - 1].to_owned())
}

fn parse_file(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut cases = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines().peekable();
    let mut side = None;
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix("## ") {
            title = heading.to_owned();
        } else if line.starts_with("<!-- meta=") {
            // Lenient modes and special harness types are llhttp options: not strict.
            let meta: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            let kind = meta
                .split("\"type\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("");
            let strict = !meta.contains("skipBody") && (kind == "request" || kind == "response");
            side = if kind.starts_with("request") {
                Some((Kind::Request, strict))
            } else if kind.starts_with("response") {
                Some((Kind::Response, strict))
            } else {
                None
            };
        } else if line.starts_with("```http") {
            let mut block = Vec::new();
            for body in lines.by_ref() {
                if body.starts_with("```") {
                    break;
                }
                block.push(body);
            }
            while lines.peek().is_some_and(|l| !l.starts_with("```log")) {
                lines.next();
            }
            lines.next();
            let mut log = Vec::new();
            for entry in lines.by_ref() {
                if entry.starts_with("```") {
                    break;
                }
                log.push(entry.to_owned());
            }
            let Some((case_side, strict)) = side.take() else {
                continue;
            };
            let rejected = log.iter().any(|l| l.contains(" error code="));
            let not_http = log
                .iter()
                .filter_map(|l| span(l, "protocol"))
                .any(|p| p != "HTTP");
            // HTTP/0.9 (no version, or 0.x) is not HTTP/1 and not followed.
            let http09 = !log
                .iter()
                .any(|l| span(l, "version").is_some_and(|v| !v.starts_with("0.")));
            if not_http || (http09 && !rejected) {
                continue;
            }
            let mut expected = Vec::new();
            let mut method = String::new();
            let mut url = String::new();
            for entry in &log {
                if let Some(m) = span(entry, "method") {
                    method.push_str(&m);
                }
                if let Some(u) = span(entry, "url") {
                    url.push_str(&u);
                }
                if let Some(rest) = entry.split(" headers complete ").nth(1) {
                    match case_side {
                        Kind::Request => expected.push(format!(
                            "{} {}",
                            std::mem::take(&mut method),
                            std::mem::take(&mut url)
                        )),
                        Kind::Response => {
                            let status = rest.split("status=").nth(1).unwrap_or("");
                            expected.push(status.split(' ').next().unwrap_or("").to_owned());
                        }
                    }
                }
            }
            cases.push(Case {
                file: file.clone(),
                title: title.clone(),
                side: case_side,
                raw: wire_bytes(&block.join("\n")),
                expected,
                strict,
                rejected,
            });
        }
    }
    cases
}

/// Every strict case llhttp accepts, requests then responses; an error naming the folder when
/// it is absent.
pub fn load() -> Result<Vec<Case>, String> {
    Ok(load_all()?
        .into_iter()
        .filter(|c| c.strict && !c.rejected)
        .collect())
}

/// Every HTTP/1 case, lenient and malformed ones too (for a real gateway to judge).
pub fn load_all() -> Result<Vec<Case>, String> {
    let dir = vectors_dir();
    if !dir.is_dir() {
        return Err(format!(
            "llhttp vectors not found at {}: the tests need ../shared/vectors beside the project",
            dir.display()
        ));
    }
    let mut cases = Vec::new();
    for side in ["request", "response"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(side))
            .map_err(|e| format!("reading {}: {e}", dir.join(side).display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            cases.extend(parse_file(&file));
        }
    }
    Ok(cases)
}
