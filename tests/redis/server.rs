//! A `redis-server` for the tests, on a free loopback port.

use crate::common::BOUND;
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::AbortHandle,
    time::timeout,
};

/// A `redis-server` on a free loopback port, killed when dropped.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    dir: PathBuf,
    durable: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Without persistence.
    pub(crate) async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// With `appendonly yes` and `appendfsync always` when `durable`.
    pub(crate) async fn start_with(durable: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("tower-eventsource-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut server = RedisServer {
            port,
            dir,
            durable,
            child: None,
        };
        server.run().await;
        server
    }

    pub(crate) async fn run(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start redis-server ({error}): install it (Debian: apt-get install redis-server)")
        });
        self.child = Some(child);
        // Bounded: ready within BOUND or the test fails.
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if let Ok(mut conn) = self.client().get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    pub(crate) async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// `kill -9`.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9`, then start again on the same port with the same data directory.
    pub(crate) async fn crash_and_restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay on a free loopback port in front of a [`RedisServer`]: clients made with
/// [`Proxy::client`] reach Redis through it, and [`Proxy::hold`] holds back what goes through
/// it, both ways, until [`Proxy::release`], as if their connections had stalled.
pub(crate) struct Proxy {
    port: u16,
    held: watch::Sender<bool>,
    /// The local address of each of the relay's connections to Redis, as `CLIENT LIST` shows it.
    upstream: Arc<Mutex<Vec<String>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

/// Passes on what `from` sends to `to`, except while held; then closes `to`'s side.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // Checked after the read: what was sent once the relay was held waits here.
        if held.wait_for(|held| !*held).await.is_err() {
            break;
        }
        if to.write_all(&buf[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub(crate) async fn start(redis: &RedisServer) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("a local address").port();
        let target = redis.port;
        let (held, is_held) = watch::channel(false);
        let upstream: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (upstream, tasks) = (Arc::clone(&upstream), Arc::clone(&tasks));
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let connect = TcpStream::connect(("127.0.0.1", target));
                    let Ok(Ok(outbound)) = timeout(BOUND, connect).await else {
                        continue;
                    };
                    if let Ok(addr) = outbound.local_addr() {
                        upstream.lock().unwrap().push(addr.to_string());
                    }
                    let (from_client, to_client) = inbound.into_split();
                    let (from_redis, to_redis) = outbound.into_split();
                    let requests = tokio::spawn(relay(from_client, to_redis, is_held.clone()));
                    let replies = tokio::spawn(relay(from_redis, to_client, is_held.clone()));
                    let mut tasks = tasks.lock().unwrap();
                    tasks.extend([requests.abort_handle(), replies.abort_handle()]);
                }
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Proxy {
            port,
            held,
            upstream,
            tasks,
        }
    }

    /// A client that reaches Redis through this relay.
    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("valid url")
    }

    /// Holds back, from now on, whatever the relay's connections send either way.
    pub(crate) fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Passes on what was held, and everything after.
    pub(crate) fn release(&self) {
        self.held.send_replace(false);
    }

    /// Whether Redis's connection from `addr` (its `CLIENT LIST` `addr`) is one of the relay's.
    pub(crate) fn relays(&self, addr: &str) -> bool {
        self.upstream.lock().unwrap().iter().any(|own| own == addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
