//! Scale-out through Redis Streams, against a real `redis-server` that each test starts on a
//! free loopback port (and stops): two servers ("instances") in one test process share hubs
//! through it; clients are real HTTP clients reading events with `eventsource-stream`.
//!
//! These tests need the `redis-server` program (Debian package `redis-server`), so they are
//! ignored by a plain `cargo test`; run them with
//! `cargo test --features redis --test redis -- --include-ignored`. When run, a missing
//! `redis-server` fails them (it never skips them silently); `.ci/run` installs it.

#[cfg(feature = "redis")]
mod common;
#[cfg(feature = "redis")]
#[path = "redis/guarantees.rs"]
mod guarantees;
#[cfg(all(feature = "redis", feature = "metrics", feature = "tracing"))]
#[path = "redis/observe.rs"]
mod observe;
#[cfg(feature = "redis")]
#[path = "redis/scale_out.rs"]
mod scale_out;
#[cfg(feature = "redis")]
#[path = "redis/server.rs"]
mod server;

/// Stands for the Redis tests in a build without the `redis` feature, so that a plain
/// `cargo test` lists them as ignored rather than running nothing silently.
#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the redis feature and redis-server: cargo test --features redis --test redis -- --include-ignored"]
fn redis_scale_out_tests_need_the_redis_feature() {
    panic!("build with --features redis to run the Redis scale-out tests");
}

/// Stands for the Redis metrics and spans test in a build without the `metrics` and `tracing`
/// features.
#[cfg(all(feature = "redis", not(all(feature = "metrics", feature = "tracing"))))]
#[test]
#[ignore = "needs the metrics and tracing features: cargo test --all-features --test redis -- --include-ignored"]
fn redis_metrics_tests_need_the_metrics_and_tracing_features() {
    panic!("build with --all-features to run the Redis metrics and spans test");
}
