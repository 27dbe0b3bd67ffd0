//! TCP settings for a server of long-lived streams: a listener with the system's largest
//! backlog, and `TCP_USER_TIMEOUT`, which drops clients that stopped reading or vanished.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_eventsource::tcp;
//!
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let listener = tcp::bind("0.0.0.0:3000").await?;
//! tcp::set_user_timeout(&listener, Duration::from_secs(30))?; // every accepted socket has it
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The listener is an ordinary [`tokio::net::TcpListener`]: a hyper accept loop takes it as
//! it is, and on Linux the sockets it accepts carry the listener's user timeout.
//!
//! # Backlog
//!
//! A listener's backlog is the number of connections the system completes for it before the
//! server accepts them. Once it is full, Linux drops new connection requests (SYNs), and each
//! client whose SYN was dropped sends it again only after a second (then 3 s, 7 s...). After a
//! deploy or a network blip every browser reconnects at once, and a small backlog turns that
//! storm into seconds of delay: tokio's `TcpListener::bind` listens with 128, as the standard
//! library does. [`bind`] listens with [`backlog()`], the system's largest.
//!
//! # `TCP_USER_TIMEOUT`
//!
//! A client that stops reading, or vanishes without closing its connection, is not noticed by
//! a read: its socket and kernel send buffer stay held while it stays connected, or for about
//! 16 minutes of retransmissions (Linux's defaults) once it is gone. With
//! [`set_user_timeout`], TCP drops a connection whose sent data has gone unacknowledged, or
//! whose window has stayed shut, for that long; the server then drops the body and the
//! handler sees the disconnect (see [Disconnects](crate#disconnects)). Pick a value well
//! above the longest stall a healthy client sees, such as the
//! [send timeout](crate::EventSource::send_timeout).
//!
//! On Linux (and Android) a socket accepted from a listener inherits the listener's setting,
//! so one call on the listener covers every connection, whether `axum::serve` or a hyper
//! accept loop accepts them. Only connections whose handshake completed before the call miss
//! it, so make it right after [`bind`]. The option exists on Linux and Android only; elsewhere
//! [`set_user_timeout`] returns an [`io::ErrorKind::Unsupported`] error.

use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};

/// The backlog when the system's cannot be read: Linux's default since 5.4.
const FALLBACK_BACKLOG: u32 = 4096;

/// The shortest and the longest `TCP_USER_TIMEOUT` Linux takes, in whole milliseconds.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MIN_USER_TIMEOUT: Duration = Duration::from_millis(1);
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Binds a listener to `addr` whose backlog is [`backlog()`], the system's largest.
///
/// Like [`TcpListener::bind`], which it replaces: `addr` may resolve to several addresses,
/// each tried in turn until one binds, and `SO_REUSEADDR` is set except on Windows.
///
/// # Errors
///
/// When `addr` resolves to no address, or when none of them can be bound (the port is taken,
/// the address is not this machine's).
pub async fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match bind_addr(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to no address",
        )
    }))
}

fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog())
}

/// The backlog [`bind`] listens with: the largest the system allows.
///
/// On Linux and Android it is `net.core.somaxconn`, read from
/// `/proc/sys/net/core/somaxconn` at each call (4096 by default since Linux 5.4, 128 before):
/// the kernel caps every listener's backlog at that value, so a larger one would be no
/// different, and raising the sysctl raises it for listeners bound afterwards. Elsewhere, or
/// when the file cannot be read, it is 4096, which the system caps at its own limit (such as
/// `kern.ipc.somaxconn` on macOS and the BSDs). It is at most `i32::MAX`, the most `listen`
/// takes.
pub fn backlog() -> u32 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(somaxconn) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|value| value.trim().parse::<u32>().ok())
    {
        return somaxconn.min(i32::MAX as u32);
    }
    FALLBACK_BACKLOG
}

/// Sets `TCP_USER_TIMEOUT` on a listener, which the sockets it accepts inherit on Linux, or on
/// an accepted stream.
///
/// TCP then drops a connection whose sent data has gone unacknowledged, or whose receive
/// window has stayed shut, for `timeout`. `Duration::ZERO` turns it off (the system's
/// behaviour); it is set in whole milliseconds, at least one and at most `i32::MAX` of them
/// (about 24.8 days).
///
/// With axum, call it on the listener before `axum::serve`, as the [module docs](self) show.
/// On a stream from a hyper accept loop, or with axum's `ListenerExt::tap_io` for each
/// accepted one, it sets that connection's:
///
/// ```no_run
/// use std::time::Duration;
/// use axum::serve::ListenerExt;
/// use tower_eventsource::tcp;
///
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tcp::bind("0.0.0.0:3000").await?.tap_io(|stream| {
///     let _ = tcp::set_user_timeout(stream, Duration::from_secs(30));
/// });
/// axum::serve(listener, app).await
/// # }
/// ```
///
/// # Errors
///
/// [`io::ErrorKind::Unsupported`] on systems without the option (all but Linux and
/// Android); the system's error if it refuses it.
pub fn set_user_timeout<S: Socket>(socket: &S, timeout: Duration) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Linux takes the milliseconds as a non-negative `int`.
        let timeout =
            (!timeout.is_zero()).then(|| timeout.clamp(MIN_USER_TIMEOUT, MAX_USER_TIMEOUT));
        socket.sock_ref().set_tcp_user_timeout(timeout)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (socket, timeout);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_USER_TIMEOUT is not available on this system",
        ))
    }
}

/// A TCP socket that [`set_user_timeout`] takes: tokio's and the standard library's
/// `TcpListener` and `TcpStream`.
///
/// This trait is sealed: it cannot be implemented outside this crate.
pub trait Socket: sealed::Sealed {}

mod sealed {
    /// Gives the socket's options to `socket2`.
    pub trait Sealed {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        fn sock_ref(&self) -> socket2::SockRef<'_>;
    }
}

macro_rules! sockets {
    ($($socket:ty),*) => {$(
        impl Socket for $socket {}

        impl sealed::Sealed for $socket {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            fn sock_ref(&self) -> socket2::SockRef<'_> {
                socket2::SockRef::from(self)
            }
        }
    )*};
}

sockets!(
    tokio::net::TcpListener,
    tokio::net::TcpStream,
    std::net::TcpListener,
    std::net::TcpStream
);

#[cfg(test)]
mod tests {
    /// Where the option does not exist, an error says so; Linux's behaviour is tested on real
    /// sockets in `tests/tcp.rs`.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    #[tokio::test]
    async fn set_user_timeout_is_unsupported_without_the_option() {
        let listener = super::bind("127.0.0.1:0").await.unwrap();
        let error =
            super::set_user_timeout(&listener, std::time::Duration::from_secs(30)).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::Unsupported);
    }
}
