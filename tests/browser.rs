//! A real browser against the chat example: headless Chromium, driven through chromedriver,
//! shows every broadcast message in order across a lost answer to a post (sent again with the
//! same `Idempotency-Key`, stored once), a dropped stream (replay from `Last-Event-ID`), a
//! newly opened page (recent messages, then the stream from the newest of them), a server
//! restart (the `reset` event) and a stop (`204`, no more reconnects).
//!
//! It needs the Debian packages `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`), so plain `cargo test` lists it as ignored; run it with
//! `cargo test --test browser -- --include-ignored` (CI does). Without them it fails.

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HttpClient},
    rt::TokioExecutor,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::{
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::time::{sleep, timeout};

mod common;

use common::{
    example::{build, Result, Running as Server, BUILD},
    split_id,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Bound on everything after the build.
const WHOLE_TEST: Duration = Duration::from_secs(60);
/// Bound on any one thing the test waits for: a process to start, the page to show something.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; run with --include-ignored"]
async fn chat_page_follows_the_stream_across_drops_restarts_and_stop() {
    if let Some(missing) = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .find(|path| !Path::new(path).exists())
    {
        panic!(
            "browser test: {missing} not found; install the Debian packages chromium and \
             chromium-driver"
        );
    }
    let chat = match timeout(BUILD, build("chat")).await {
        Ok(Ok(chat)) => chat,
        Ok(Err(error)) => panic!("building the chat example: {error}"),
        Err(_) => panic!("building the chat example took longer than {BUILD:?}"),
    };
    match timeout(WHOLE_TEST, run(&chat)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("{error}"),
        Err(_) => panic!("the browser test took longer than {WHOLE_TEST:?}"),
    }
}

async fn run(chat: &Path) -> Result<()> {
    let server = Server::start(chat, 0, &[]).await?;
    let browser = Browser::start().await?;
    let result = checks(&browser.client, server, chat).await;
    // Ends the browser cleanly; on timeout or panic the guards kill the processes instead.
    browser.close().await;
    result
}

async fn checks(page: &Client, server: Server, chat: &Path) -> Result<()> {
    let port = server.port;
    let http = Http::new(port);
    page.goto(&format!("http://127.0.0.1:{port}/")).await?;
    wait_page(page, "the stream to open", |p| p.state == "open").await?;

    // (1) Messages posted over HTTP, and one sent with the page's own form, show up in order.
    for text in ["one", "two", "three"] {
        http.post_message(text).await?;
    }
    wait_page(page, "the first three messages", |p| {
        p.messages == ["one", "two", "three"]
    })
    .await?;
    // The form's post reaches the server, but its answer is lost: the page sends it again with
    // the same Idempotency-Key, and the server stores it once.
    page.execute(RECORD_POSTS, vec![json!(1)]).await?;
    send_with_form(page, "four, from the form").await?;
    wait_page(page, "the message sent with the form", |p| {
        p.messages == ["one", "two", "three", "four, from the form"]
    })
    .await?;
    let keys = wait_posts(page, 2).await?;
    ensure(
        keys[0] == keys[1] && keys[0].len() >= 16,
        format!("the retry should reuse the post's Idempotency-Key: {keys:?}"),
    )?;
    let texts: Vec<Value> = http
        .messages()
        .await?
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    ensure(
        texts == ["one", "two", "three", "four, from the form"],
        format!("the retried message should be stored once: {texts:?}"),
    )?;

    // (2) The server ends the stream and three messages go out while the browser is away; it
    // reconnects with Last-Event-ID and gets exactly those three.
    let before = http.stats().await?;
    http.send(Method::POST, "/admin/drop", "").await?;
    for text in ["five", "six", "seven"] {
        http.post_message(text).await?;
    }
    let during = http.stats().await?;
    ensure(
        during["subscribers"] == 0,
        format!("the browser should still be disconnected (retry is 500 ms): {during}"),
    )?;
    let all = [
        "one",
        "two",
        "three",
        "four, from the form",
        "five",
        "six",
        "seven",
    ];
    let shown = wait_page(page, "the three missed messages", |p| {
        p.messages.len() >= all.len() && p.state == "open"
    })
    .await?;
    ensure(
        shown.messages == all && shown.notice.is_none(),
        format!("the page should show every message once, in order, without a reload: {shown:?}"),
    )?;
    let newest = http.messages().await?.last().cloned().unwrap_or_default();
    ensure(
        newest["id"].as_str() == Some(shown.last_id.as_str()),
        format!("the last event id should be the newest message's, {newest}: {shown:?}"),
    )?;
    ensure(
        split_id(&shown.last_id).1 == all.len() as u64,
        format!("the hub numbers its events from 1, so the seventh is <epoch>-7: {shown:?}"),
    )?;
    let after = http.stats().await?;
    ensure(
        after["stream_requests"] == count(&before["stream_requests"])? + 1
            && after["subscribers"] == 1
            && after["resets"] == 0,
        format!("one reconnect should reach /events and resume: before {before}, after {after}"),
    )?;

    // (2b) A page opened now loads the recent messages, then streams from the newest of them
    // (`/events?after=ID`): everything once, and live messages after.
    page.goto(&format!("http://127.0.0.1:{port}/")).await?;
    let loaded = wait_page(page, "the newly opened page", |p| p.state == "open").await?;
    ensure(
        loaded.messages == all,
        format!("a newly opened page should show every message once: {loaded:?}"),
    )?;
    http.post_message("eight").await?;
    let mut expected = all.to_vec();
    expected.push("eight");
    wait_page(page, "a live message on the newly opened page", |p| {
        p.messages == expected
    })
    .await?;
    // Each message gets a new key.
    page.execute(RECORD_POSTS, vec![json!(0)]).await?;
    for text in ["nine", "ten"] {
        send_with_form(page, text).await?;
        expected.push(text);
        wait_page(page, "a message sent with the form", |p| {
            p.messages == expected
        })
        .await?;
    }
    let keys = wait_posts(page, 2).await?;
    ensure(
        keys[0] != keys[1],
        format!("each message should have its own Idempotency-Key: {keys:?}"),
    )?;

    // (3) A restarted server does not know the browser's Last-Event-ID: it sends `reset`, and
    // the page replaces its list with the new server's messages.
    server.kill().await;
    let server = Server::start(chat, port, &[]).await?;
    http.post_message("after the restart").await?;
    wait_page(
        page,
        "the reset notice and the new server's messages",
        |p| p.notice.is_some() && p.messages == ["after the restart"] && p.state == "open",
    )
    .await?;
    http.post_message("live again").await?;
    wait_page(page, "a live message after the reset", |p| {
        p.messages == ["after the restart", "live again"]
    })
    .await?;
    let stats = http.stats().await?;
    ensure(
        stats["resets"] == 1,
        format!("the new server should have sent one reset: {stats}"),
    )?;

    // (4) A stopped server answers 204, and the browser stops for good: one refused attempt,
    // then no more requests.
    let before = count(&http.stats().await?["stream_requests"])?;
    http.send(Method::POST, "/admin/stop", "").await?;
    wait_page(page, "the stream to be closed for good", |p| {
        p.ready_state == 2 && p.state == "closed"
    })
    .await?;
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        let now = count(&http.stats().await?["stream_requests"])?;
        ensure(
            now <= before + 1,
            format!("the browser kept reconnecting after 204: {before} then {now} requests"),
        )?;
        sleep(Duration::from_millis(100)).await;
    }
    let now = count(&http.stats().await?["stream_requests"])?;
    ensure(
        now == before + 1,
        format!("exactly one refused attempt expected: {before} then {now} requests"),
    )?;
    server.kill().await;
    Ok(())
}

/// Types `text` into the page's form and sends it.
async fn send_with_form(page: &Client, text: &str) -> Result<()> {
    page.find(Locator::Css("#text"))
        .await?
        .send_keys(text)
        .await?;
    page.find(Locator::Css("#send button"))
        .await?
        .click()
        .await?;
    Ok(())
}

/// Wraps the page's `fetch`: it records the `Idempotency-Key` of every post in
/// `postedKeys`, and loses the answers to the first `arguments[0]` posts after the server got
/// them, as a dropped connection would.
const RECORD_POSTS: &str = "
    window.postedKeys = [];
    let lose = arguments[0];
    const realFetch = window.fetch;
    window.fetch = async (url, options) => {
        if (!options || options.method !== 'POST') return realFetch(url, options);
        window.postedKeys.push(new Headers(options.headers).get('Idempotency-Key'));
        const response = await realFetch(url, options);
        if (lose > 0) {
            lose -= 1;
            throw new TypeError('the answer was lost');
        }
        return response;
    };
";

/// Waits (for at most [`WAIT`]) until the page has made `count` posts since [`RECORD_POSTS`],
/// and returns their `Idempotency-Key`s; fails if it makes more.
async fn wait_posts(page: &Client, count: usize) -> Result<Vec<String>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let keys: Vec<String> =
            serde_json::from_value(page.execute("return window.postedKeys;", vec![]).await?)?;
        ensure(
            keys.len() <= count,
            format!("expected {count} posts: {keys:?}"),
        )?;
        if keys.len() == count {
            return Ok(keys);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {count} posts: {keys:?}").into());
        }
        sleep(Duration::from_millis(50)).await;
    }
}

fn ensure(condition: bool, message: String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(message.into())
    }
}

fn count(value: &Value) -> Result<u64> {
    value
        .as_u64()
        .ok_or_else(|| format!("not a count: {value}").into())
}

/// What the page shows, read in one script call.
#[derive(Debug, Deserialize)]
struct Page {
    state: String,
    #[serde(rename = "readyState")]
    ready_state: u8,
    #[serde(rename = "lastId")]
    last_id: String,
    messages: Vec<String>,
    notice: Option<String>,
}

const READ_PAGE: &str = "
    const notice = document.getElementById('notice');
    return {
        state: document.getElementById('state').textContent,
        readyState: typeof source === 'undefined' ? 0 : source.readyState,
        lastId: document.getElementById('last-id').textContent,
        messages: Array.from(document.querySelectorAll('#messages li'), item => item.textContent),
        notice: notice.hidden ? null : notice.textContent,
    };
";

/// Polls the page until `done` holds, for at most [`WAIT`].
async fn wait_page(page: &Client, what: &str, done: impl Fn(&Page) -> bool) -> Result<Page> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen: Page = serde_json::from_value(page.execute(READ_PAGE, vec![]).await?)?;
        if done(&seen) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}; the page shows {seen:?}").into());
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP client for the example's endpoints.
struct Http {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(port: u16) -> Self {
        Http {
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn send(&self, method: Method, path: &str, body: &str) -> Result<String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?;
        let response = timeout(WAIT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer to {path}"))??;
        let status = response.status();
        let body = timeout(WAIT, response.into_body().collect())
            .await
            .map_err(|_| format!("no body from {path}"))??
            .to_bytes();
        let body = String::from_utf8(body.to_vec())?;
        if !status.is_success() {
            return Err(format!("{path} answered {status}: {body}").into());
        }
        Ok(body)
    }

    async fn post_message(&self, text: &str) -> Result<()> {
        self.send(Method::POST, "/messages", text).await.map(drop)
    }

    async fn messages(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_str(
            &self.send(Method::GET, "/messages", "").await?,
        )?)
    }

    async fn stats(&self) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.send(Method::GET, "/admin/stats", "").await?,
        )?)
    }
}

/// Headless Chromium behind chromedriver, with a WebDriver session.
struct Browser {
    client: Client,
    _driver: Driver,
}

/// The chromedriver process, in its own process group with the browser it starts; the whole
/// group is killed and the profile removed when dropped.
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Result<Browser> {
        let unique = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let profile =
            std::env::temp_dir().join(format!("browser-test-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&profile)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let driver = Driver { child, profile };

        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not start listening".into());
            }
            sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                    format!("--user-data-dir={}", driver.profile.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object");
        };
        let client = timeout(
            WAIT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .map_err(|_| "no WebDriver session: Chromium did not start")??;
        Ok(Browser {
            client,
            _driver: driver,
        })
    }

    /// Ends the session, which closes the browser.
    async fn close(self) {
        let _ = timeout(WAIT, self.client.close()).await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; this reaches the browser it started too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
