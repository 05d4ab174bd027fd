//! Families of samples, and their Prometheus text through prometheus-client.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

/// Counter or gauge: all this agent exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A sample's value: a count, or seconds (CPU time) as a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Count(u64),
    Seconds(f64),
}

/// One value of a family, with its labels.
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric family. Counter names are given without `_total`: the
/// encoder appends it, as OpenMetrics wants.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample; label values are owned so a scrape never borrows live
    /// state, and escaped here because prometheus-client writes them as given
    /// (an output URI or file path may hold a quote or a backslash).
    pub fn with(&mut self, labels: &[(&'static str, &str)], value: u64) -> &mut Self {
        self.push(labels, Value::Count(value))
    }

    /// Adds a sample in seconds.
    pub fn with_seconds(
        &mut self,
        labels: &[(&'static str, &str)],
        value: std::time::Duration,
    ) -> &mut Self {
        self.push(labels, Value::Seconds(value.as_secs_f64()))
    }

    fn push(&mut self, labels: &[(&'static str, &str)], value: Value) -> &mut Self {
        self.samples.push(Sample {
            labels: labels.iter().map(|(k, v)| (*k, escape(v))).collect(),
            value,
        });
        self
    }
}

/// A label value as the text format wants it: `\\`, `\"` and `\n` escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A scrape's families as a prometheus-client collector, so the registry's
/// encoder (`_total`, `# EOF`) does the formatting.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in &self.0 {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for sample in &family.samples {
                // Without labels, no `{}`: the family encoder would write one.
                if sample.labels.is_empty() {
                    encode_value(&mut metric, family.kind, sample.value)?;
                } else {
                    let mut m = metric.encode_family(&sample.labels)?;
                    encode_value(&mut m, family.kind, sample.value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(m: &mut MetricEncoder<'_>, kind: Kind, value: Value) -> Result<(), fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Count(v)) => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (Kind::Counter, Value::Seconds(v)) => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (Kind::Gauge, Value::Count(v)) => m.encode_gauge(&v),
        (Kind::Gauge, Value::Seconds(v)) => m.encode_gauge(&v),
    }
}

/// Prometheus text (OpenMetrics 1.0) of `families`.
pub fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(families)));
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in
    // our families, and an empty answer is better than a panic.
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_gauges_and_labels() {
        let mut c = Family::new("mirror_x_packets", "X.", Kind::Counter);
        c.with(&[("interface", "veth\"1"), ("reason", "ring_full")], 7);
        let mut g = Family::new("mirror_y_bytes", "Y.", Kind::Gauge);
        g.with(&[], 3);
        let mut s = Family::new("mirror_cpu_seconds", "S.", Kind::Counter);
        s.with_seconds(&[("policy", "web")], std::time::Duration::from_millis(1500));
        let text = encode(vec![c, g, s, Family::new("mirror_z", "Z.", Kind::Counter)]);
        assert!(
            text.contains("mirror_cpu_seconds_total{policy=\"web\"} 1.5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE mirror_x_packets counter\n"), "{text}");
        assert!(
            text.contains(
                "mirror_x_packets_total{interface=\"veth\\\"1\",reason=\"ring_full\"} 7\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nmirror_y_bytes 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(escape("a\\b\nc").eq("a\\\\b\\nc"));
    }
}
