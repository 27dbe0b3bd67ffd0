//! Running an example as a process, as a user would: built by the cargo running the tests,
//! started on a free port, stopped when dropped.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    time::timeout,
};

pub(crate) type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// Bound on building an example (a fresh checkout compiles it here).
pub(crate) const BUILD: Duration = Duration::from_secs(300);
/// Bound on an example starting to listen.
const START: Duration = Duration::from_secs(10);

/// Builds example `name` with the cargo running this test (with every feature) and returns
/// the executable's path.
pub(crate) async fn build(name: &str) -> Result<PathBuf> {
    let output = Command::new(env!("CARGO"))
        .args(["build", "--all-features", "--example", name])
        .arg("--message-format=json")
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await?;
    if !output.status.success() {
        return Err(format!("cargo build --example {name} failed: {}", output.status).into());
    }
    String::from_utf8(output.stdout)?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == name
                && message["executable"].is_string()
        })
        .and_then(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo did not report the {name} executable").into())
}

/// An example server, running; killed when dropped.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// What it prints after its first line. Kept open so it never writes to a closed pipe.
    pub(crate) stdout: Lines<BufReader<ChildStdout>>,
}

impl Running {
    /// Starts `executable` with `args` plus `--port PORT` (0 for any) and reads the port from
    /// the first line it prints, `listening on http://127.0.0.1:PORT`.
    pub(crate) async fn start(executable: &Path, port: u16, args: &[&str]) -> Result<Running> {
        let mut child = Command::new(executable)
            .args(args)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = timeout(START, stdout.next_line())
            .await
            .map_err(|_| "the example printed nothing")??
            .ok_or("the example exited before listening")?;
        let port = line
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        Ok(Running {
            child,
            port,
            stdout,
        })
    }

    /// Kills the server and waits until it has exited, so its port is free.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A GET of `path` on the example at 127.0.0.1:`port`: the status, the headers and the body.
pub(crate) async fn get(port: u16, path: &str) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri = format!("http://127.0.0.1:{port}{path}");
    let response = timeout(super::BOUND, client.get(uri.parse().expect("a valid URI")))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} in time"))
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    let (head, body) = response.into_parts();
    let body = timeout(super::BOUND, body.collect())
        .await
        .unwrap_or_else(|_| panic!("no body from GET {path} in time"))
        .expect("the body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
    (head.status, head.headers, body)
}

/// Checks the endpoints an example has for the infrastructure: `GET /healthz` is `200` with
/// `ok`, and `GET /metrics` (the examples are built with the `metrics` feature) is Prometheus's
/// text format, with the library's metrics, those of the hub named `hub` among them, registered
/// before anything happened.
pub(crate) async fn assert_healthy_with_metrics(port: u16, hub: &str) {
    let (status, _, body) = get(port, "/healthz").await;
    assert_eq!((status, body.as_str()), (http::StatusCode::OK, "ok"));

    let (status, headers, body) = get(port, "/metrics").await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let content_type = headers[http::header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_prometheus_text(&body);
    for name in [
        "sse_connections_active",
        "sse_connections_total",
        "sse_bytes_sent_total",
    ] {
        assert!(body.contains(&format!("# TYPE {name} ")), "{name}: {body}");
    }
    let subscribers = format!("sse_hub_subscribers{{hub=\"{hub}\",backend=");
    assert!(body.contains(&subscribers), "{subscribers}: {body}");
}

/// The value of the sample `series` (a name, with its labels if it has any) in an example's
/// `GET /metrics`; `None` when it is not there.
pub(crate) async fn metric(port: u16, series: &str) -> Option<f64> {
    let (status, _, body) = get(port, "/metrics").await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    body.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map(|(_, value)| value.parse().expect("a number"))
}

/// Checks that `text` is in Prometheus's text exposition format: every line a comment
/// (`# HELP name ...`, `# TYPE name kind`) or a sample (`name{label="value",...} value`), with
/// at least one `# TYPE` line and one sample.
pub(crate) fn assert_prometheus_text(text: &str) {
    fn is_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    /// Whether `labels` is `name="value"` pairs, separated and maybe ended by commas.
    fn are_labels(mut labels: &str) -> bool {
        while !labels.is_empty() {
            let Some((name, rest)) = labels.split_once("=\"") else {
                return false;
            };
            // The value ends at the first quote that no backslash escapes.
            let mut escaped = false;
            let Some(end) = rest.find(|c| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            }) else {
                return false;
            };
            labels = &rest[end + 1..];
            labels = labels.strip_prefix(',').unwrap_or(labels);
            if !is_name(name) {
                return false;
            }
        }
        true
    }
    let is_value =
        |value: &str| matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok();

    let (mut types, mut samples) = (0, 0);
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words[..] {
                ["TYPE", name, kind] => {
                    assert!(is_name(name), "{line:?}");
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                    assert!(kinds.contains(&kind), "{line:?}");
                    types += 1;
                }
                ["TYPE", ..] => panic!("a TYPE line is `# TYPE name kind`: {line:?}"),
                ["HELP", name, ..] => assert!(is_name(name), "{line:?}"),
                _ => {} // any other comment
            }
            continue;
        }
        let (series, rest) = match line.split_once('{') {
            Some((name, rest)) => {
                let (labels, rest) = rest.rsplit_once('}').expect("labels end with }");
                assert!(are_labels(labels), "{line:?}");
                (name, rest)
            }
            None => line.split_once(' ').expect("a sample has a value"),
        };
        assert!(is_name(series), "{line:?}");
        let mut rest = rest.split_whitespace();
        assert!(rest.next().is_some_and(is_value), "{line:?}");
        // An optional timestamp, in milliseconds.
        if let Some(timestamp) = rest.next() {
            assert!(timestamp.parse::<i64>().is_ok(), "{line:?}");
        }
        assert_eq!(rest.next(), None, "{line:?}");
        samples += 1;
    }
    assert!(types > 0 && samples > 0, "no metric in {text:?}");
}
