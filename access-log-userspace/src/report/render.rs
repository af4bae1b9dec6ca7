//! A report as a terminal table, as JSON, or as one self-contained HTML page whose charts are
//! inline SVG (no script, no network: it opens anywhere). Every text from the log is escaped
//! for HTML: URLs and API names are the clients' words.
use std::fmt::Write as _;

use chrono::{DateTime, Local};

use super::query::{Report, SUCCESS};

/// Colors of the series, in order (then repeated).
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// Rows shown in the lists (URLs, errors).
const TOP: usize = 20;

fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn span(report: &Report) -> String {
    match (report.first_ms, report.last_ms) {
        (Some(first), Some(last)) => format!("from {} to {}", time(first), time(last)),
        _ => "none".to_owned(),
    }
}

/// A table's header row.
fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Rows of cells as aligned columns: text left-aligned, the columns from `numbers` on (counts,
/// times) right-aligned.
fn columns(rows: &[Vec<String>], numbers: usize, out: &mut String) {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                line.push_str("  ");
            }
            if i < numbers {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// The report for a terminal.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} events {}; calls counted per {} s\n",
        report.events,
        span(report),
        report.bucket_seconds
    );
    let apis = report.apis_over_time();
    let _ = writeln!(out, "Calls per API over time (INCOMING_REQUEST)");
    let mut rows = vec![std::iter::once("time".to_owned())
        .chain(apis.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()];
    for (bucket, by_api) in &report.calls_over_time {
        rows.push(
            std::iter::once(time(*bucket))
                .chain(
                    apis.iter()
                        .map(|a| by_api.get(*a).copied().unwrap_or(0).to_string()),
                )
                .collect(),
        );
    }
    columns(&rows, 1, &mut out);
    let _ = writeln!(out, "\nSuccesses and failures by API (REQUEST_COMPLETE is a success; an ERROR counts under its ERROR_MESSAGE)");
    let mut rows = vec![header(&["API", "result", "count"])];
    for (api, results) in &report.results_by_api {
        for (result, count) in results {
            rows.push(vec![api.clone(), result.clone(), count.to_string()]);
        }
    }
    columns(&rows, 2, &mut out);
    let _ = writeln!(
        out,
        "\nURLs that matched no API (StatusCode=404), the most frequent first"
    );
    let mut rows = vec![header(&["RequestInURL", "count"])];
    for (url, count) in report.not_found_urls.iter().take(TOP) {
        rows.push(vec![url.clone(), count.to_string()]);
    }
    columns(&rows, 1, &mut out);
    let _ = writeln!(out, "\nTop errors");
    let mut rows = vec![header(&[
        "ERROR_MESSAGE",
        "ErrorSource",
        "ERROR_CODE",
        "count",
    ])];
    for error in report.top_errors.iter().take(TOP) {
        rows.push(vec![
            error.error_message.clone(),
            error.error_source.clone(),
            error.error_code.clone(),
            error.count.to_string(),
        ]);
    }
    columns(&rows, 3, &mut out);
    let _ = writeln!(out, "\nBackend latency by API (ms, answers from a backend)");
    let mut rows = vec![header(&["API", "count", "p50", "p90", "p99", "max"])];
    for (api, latency) in &report.latency_by_api {
        rows.push(vec![
            api.clone(),
            latency.count.to_string(),
            format!("{:.3}", latency.p50_ms),
            format!("{:.3}", latency.p90_ms),
            format!("{:.3}", latency.p99_ms),
            format!("{:.3}", latency.max_ms),
        ]);
    }
    columns(&rows, 1, &mut out);
    let _ = writeln!(
        out,
        "\nRequests whose end was not seen (LOST): {}",
        report.requests_lost
    );
    out
}

/// The report as JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// Text safe inside HTML elements and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 40.0;

/// Calls per API over time: one line per API.
fn calls_chart(report: &Report, out: &mut String) {
    let apis = report.apis_over_time();
    let buckets: Vec<(&i64, _)> = report.calls_over_time.iter().collect();
    let peak = buckets
        .iter()
        .flat_map(|(_, by_api)| by_api.values().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"calls-over-time\" role=\"img\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\"><title>Calls per API over time</title>\
         <line x1=\"{MARGIN}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"{MARGIN}\" y1=\"10\" x2=\"{MARGIN}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"4\" y=\"18\" font-size=\"11\">{peak}</text>",
        b = HEIGHT - MARGIN,
        r = WIDTH - 10.0,
    );
    let step = (WIDTH - MARGIN - 20.0) / (buckets.len().max(2) - 1) as f64;
    for (index, api) in apis.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<String> = buckets
            .iter()
            .enumerate()
            .map(|(i, (_, by_api))| {
                let count = by_api.get(*api).copied().unwrap_or(0) as f64;
                let x = MARGIN + step * i as f64;
                let y = HEIGHT - MARGIN - count / peak * (HEIGHT - MARGIN - 20.0);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"series\" data-api=\"{}\" fill=\"none\" stroke=\"{color}\" \
             stroke-width=\"2\" points=\"{}\"/>",
            escape_html(api),
            points.join(" ")
        );
    }
    if let (Some((first, _)), Some((last, _))) = (buckets.first(), buckets.last()) {
        let _ = write!(
            out,
            "<text x=\"{MARGIN}\" y=\"{}\" font-size=\"11\">{}</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            HEIGHT - MARGIN + 16.0,
            time(**first),
            WIDTH - 10.0,
            HEIGHT - MARGIN + 16.0,
            time(**last)
        );
    }
    out.push_str("</svg>");
    legend(apis.iter().map(|a| (*a).to_owned()), out);
}

fn legend(names: impl Iterator<Item = String>, out: &mut String) {
    out.push_str("<p class=\"legend\">");
    for (index, name) in names.enumerate() {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span> ",
            COLORS[index % COLORS.len()],
            escape_html(&name)
        );
    }
    out.push_str("</p>");
}

/// Successes and failures by API: a stacked horizontal bar per API.
fn results_chart(report: &Report, out: &mut String) {
    let mut results: Vec<&str> = report
        .results_by_api
        .values()
        .flat_map(|r| r.keys().map(String::as_str))
        .filter(|r| *r != SUCCESS)
        .collect();
    results.sort_unstable();
    results.dedup();
    results.insert(0, SUCCESS);
    let row = 28.0;
    let height = MARGIN + row * report.results_by_api.len() as f64;
    let label_width = 200.0;
    let peak = report
        .results_by_api
        .values()
        .map(|r| r.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"results-by-api\" role=\"img\" viewBox=\"0 0 {WIDTH} {height}\" \
         width=\"{WIDTH}\" height=\"{height}\"><title>Successes and failures by API</title>"
    );
    for (index, (api, counts)) in report.results_by_api.iter().enumerate() {
        let y = 10.0 + row * index as f64;
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            label_width - 6.0,
            y + 15.0,
            escape_html(api)
        );
        let mut x = label_width;
        for (color_index, result) in results.iter().enumerate() {
            let Some(count) = counts.get(*result) else {
                continue;
            };
            let width = *count as f64 / peak * (WIDTH - label_width - 60.0);
            let color = if *result == SUCCESS {
                "#2ca02c"
            } else {
                COLORS[color_index % COLORS.len()]
            };
            let _ = write!(
                out,
                "<rect class=\"bar\" data-api=\"{}\" data-result=\"{}\" data-count=\"{count}\" \
                 x=\"{x:.1}\" y=\"{y}\" width=\"{width:.1}\" height=\"20\" fill=\"{color}\">\
                 <title>{}: {} {count}</title></rect>",
                escape_html(api),
                escape_html(result),
                escape_html(api),
                escape_html(result)
            );
            x += width;
        }
        let total: u64 = counts.values().sum();
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{total}</text>",
            x + 4.0,
            y + 15.0
        );
    }
    out.push_str("</svg>");
}

/// The report as one HTML page.
pub fn html(report: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>access-log report</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}\
         .legend span{{margin-right:1em}}.legend i{{display:inline-block;width:10px;\
         height:10px;margin-right:4px}}</style></head><body>\
         <h1>access-log report</h1><p>{} events {}; calls counted per {} s.</p>",
        report.events,
        escape_html(&span(report)),
        report.bucket_seconds
    );
    out.push_str("<h2>Calls per API over time</h2>");
    calls_chart(report, &mut out);
    out.push_str("<h2>Successes and failures by API</h2>");
    results_chart(report, &mut out);
    out.push_str("<table id=\"results\"><tr><th>API</th><th>result</th><th>count</th></tr>");
    for (api, counts) in &report.results_by_api {
        for (result, count) in counts {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{count}</td></tr>",
                escape_html(api),
                escape_html(result)
            );
        }
    }
    out.push_str("</table><h2>URLs that matched no API (404)</h2><table id=\"not-found\"><tr><th>RequestInURL</th><th>count</th></tr>");
    for (url, count) in report.not_found_urls.iter().take(TOP) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{count}</td></tr>",
            escape_html(url)
        );
    }
    out.push_str("</table><h2>Top errors</h2><table id=\"errors\"><tr><th>ERROR_MESSAGE</th><th>ErrorSource</th><th>ERROR_CODE</th><th>count</th></tr>");
    for error in report.top_errors.iter().take(TOP) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(&error.error_message),
            escape_html(&error.error_source),
            escape_html(&error.error_code),
            error.count
        );
    }
    out.push_str("</table><h2>Backend latency by API (ms)</h2><table id=\"latency\"><tr><th>API</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>");
    for (api, l) in &report.latency_by_api {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            escape_html(api),
            l.count,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    let _ = writeln!(
        out,
        "</table><p>Requests whose end was not seen (LOST): {}.</p></body></html>",
        report.requests_lost
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        query::{Filter, Report},
        read::parse_line,
    };

    #[test]
    fn every_log_text_is_escaped_in_the_page() {
        let lines = [
            "2026-12-03T10:00:00.000+0000 Event=\"INCOMING_REQUEST\", API=\"<b>x</b>\", RequestInURL=\"/a\"",
            "2026-12-03T10:00:01.000+0000 Event=\"ERROR\", StatusCode=\"404\", ERROR_MESSAGE=\"No API matches the request\", RequestInURL=\"/<script>alert(1)</script>\"",
        ];
        let events: Vec<_> = lines.iter().filter_map(|l| parse_line(l)).collect();
        let report = Report::build(&events, &Filter::default(), 0);
        let page = html(&report);
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<b>x</b>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("id=\"calls-over-time\"") && page.contains("id=\"results-by-api\""));
        let text = table(&report);
        assert!(
            text.lines()
                .any(|l| l.starts_with("/<script>alert(1)</script> ") && l.ends_with(" 1")),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(json["events"], 2);
    }
}
