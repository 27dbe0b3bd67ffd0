//! Metrics as a test reads them: what the `metrics` crate's debugging recorder recorded.

use metrics_util::debugging::{DebugValue, Snapshotter};
use std::collections::BTreeMap;

/// What a debugging recorder recorded, each metric by its name and sorted labels. Its
/// snapshots drain what they read (a gauge's change too), so they are added up here.
#[derive(Default)]
pub(crate) struct Metrics(pub(crate) BTreeMap<String, DebugValue>);

impl Metrics {
    /// Adds what `snapshotter` recorded since the last call.
    pub(crate) fn update(&mut self, snapshotter: &Snapshotter) -> &Metrics {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (_kind, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            match (self.0.get_mut(&name), value) {
                (Some(DebugValue::Counter(total)), DebugValue::Counter(more)) => *total += more,
                (Some(DebugValue::Gauge(now)), DebugValue::Gauge(change)) => {
                    *now = (now.into_inner() + change.into_inner()).into()
                }
                (Some(DebugValue::Histogram(all)), DebugValue::Histogram(more)) => all.extend(more),
                (_, value) => {
                    self.0.insert(name, value);
                }
            }
        }
        self
    }

    pub(crate) fn get(&self, name: &str) -> &DebugValue {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not registered; have: {:#?}", self.0.keys()))
    }

    pub(crate) fn counter(&self, name: &str) -> u64 {
        match self.get(name) {
            DebugValue::Counter(value) => *value,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    pub(crate) fn gauge(&self, name: &str) -> f64 {
        match self.get(name) {
            DebugValue::Gauge(value) => value.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    pub(crate) fn histogram(&self, name: &str) -> Vec<f64> {
        match self.get(name) {
            DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// `name` with the labels of `hub` on `backend`, and `extra` (`label=value`) if given.
    pub(crate) fn hub(name: &str, hub: &str, backend: &str, extra: Option<&str>) -> String {
        let mut labels = vec![format!("backend={backend}"), format!("hub={hub}")];
        labels.extend(extra.map(str::to_owned));
        labels.sort();
        format!("{name}{{{}}}", labels.join(","))
    }
}
