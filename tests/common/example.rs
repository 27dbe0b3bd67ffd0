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
