//! The `metrics` feature: every metric read through a real recorder (the `metrics` crate's
//! debugging recorder, and the Prometheus exporter) after a scripted scenario over a real
//! server with real clients, and a send timeout on tokio's paused clock.
//!
//! Run with `cargo test --features metrics --test metrics`; a build without the feature lists
//! the tests as ignored.

#[cfg(feature = "metrics")]
mod common;
#[cfg(feature = "metrics")]
#[path = "metrics/scenario.rs"]
mod scenario;

/// Stands for the metrics tests in a build without the `metrics` feature, so that a plain
/// `cargo test` lists them as ignored rather than running nothing silently.
#[cfg(not(feature = "metrics"))]
#[test]
#[ignore = "needs the metrics feature: cargo test --features metrics --test metrics"]
fn metrics_tests_need_the_metrics_feature() {
    panic!("build with --features metrics to run the metrics tests");
}
