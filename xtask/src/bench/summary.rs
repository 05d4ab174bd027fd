//! From samples to medians per configuration: the rows of the report.

use std::collections::BTreeMap;

use super::{Measure, Sample, configs::Config};

/// "Complete" for the knee: at least 99.9% of the frames arrived.
pub const COMPLETE: f64 = 0.999;

/// The highest offered rate still complete, in one repetition.
#[derive(Clone, Copy, Debug)]
pub struct Knee {
    pub pps: f64,
    /// No rate above it was measured incomplete: the real knee may be higher.
    pub lower_bound: bool,
}

/// Medians of one configuration.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub tcp1: Option<f64>,
    pub tcp4: Option<f64>,
    /// Frames/s the server got with trafgen flat out.
    pub udp_pps: Option<f64>,
    /// Frames/s into the hooked interface then.
    pub offered_pps: Option<f64>,
    /// Completeness at that full rate.
    pub completeness_max: Option<f64>,
    /// Copies delivered per second at that full rate.
    pub mirrored_pps: Option<f64>,
    pub knee: Option<Knee>,
    /// Lowest completeness among sweep points at or below each repetition's knee.
    pub below_knee_min: Option<f64>,
    /// Bytes captured ÷ bytes at the hook, TCP with 1 and 4 streams.
    pub bytes_tcp1: Option<f64>,
    pub bytes_tcp4: Option<f64>,
    /// Our programs' ns per run (BPF statistics).
    pub hook_ns: Option<f64>,
    /// The ingress program's ns per run alone (`BPF_PROG_TEST_RUN`).
    pub prog_ns: Option<f64>,
    /// The test run's floor (a program that returns at once), median.
    pub prog_floor_ns: Option<f64>,
    /// Agent or tcpdump CPU per copy delivered, ns.
    pub copier_ns_per_copy: Option<f64>,
    /// Softirq time of all CPUs per frame offered, ns.
    pub softirq_ns_per_pkt: Option<f64>,
    pub rss_mib: Option<f64>,
    pub hwm_mib: Option<f64>,
    /// Share of frames the kernel prefilter kept from the ring (config 2).
    pub filtered_share: Option<f64>,
    /// Share of frames the agent lost, and where (full-rate runs).
    pub lost_share: Option<f64>,
    pub lost_ring_share: Option<f64>,
    pub lost_queue_share: Option<f64>,
    pub lost_send_share: Option<f64>,
}

pub struct Summary {
    pub rows: BTreeMap<Config, Row>,
    /// The configurations measured, in the report's order.
    pub configs: Vec<Config>,
    pub reps: usize,
    /// The sweep's points: (config, offered pps, completeness), for the report.
    pub sweep: Vec<(Config, usize, f64, f64)>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

impl Summary {
    pub fn new(samples: &[Sample]) -> Self {
        let reps = samples.iter().map(|s| s.rep + 1).max().unwrap_or(0);
        let mut rows = BTreeMap::new();
        let configs: Vec<Config> = Config::EVERY
            .into_iter()
            .filter(|c| samples.iter().any(|s| s.config == *c))
            .collect();
        for c in configs.iter().copied() {
            let of = |m: fn(&Measure) -> bool| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|s| s.config == c && m(&s.measure))
                    .collect()
            };
            let tcp_median = |n: u32, f: fn(&Sample) -> Option<f64>| {
                median(
                    samples
                        .iter()
                        .filter(|s| s.config == c && s.measure == Measure::Tcp(n))
                        .filter_map(f)
                        .collect(),
                )
            };
            let tcp = |n: u32| tcp_median(n, |s| s.tcp_gbps);
            let max = of(|m| *m == Measure::UdpMax);
            let cost = of(|m| *m == Measure::Cost);
            let med = |f: &dyn Fn(&Sample) -> Option<f64>| {
                median(max.iter().filter_map(|s| f(s)).collect())
            };
            // A counter of the agent's summary (or its output's) ÷ frames it saw.
            let agent_share = |key: &str| {
                median(
                    max.iter()
                        .filter_map(|s| {
                            let seen = *s.outcome.agent.get("seen")?;
                            let v = s
                                .outcome
                                .agent
                                .get(key)
                                .or_else(|| s.outcome.output.get(key))?;
                            (seen > 0).then(|| *v as f64 / seen as f64)
                        })
                        .collect(),
                )
            };
            let knees: Vec<Knee> = (0..reps).filter_map(|r| knee(samples, c, r)).collect();
            let knee_median = median(knees.iter().map(|k| k.pps).collect()).map(|pps| Knee {
                pps,
                lower_bound: knees.iter().filter(|k| k.lower_bound).count() * 2 > knees.len(),
            });
            let below_knee_min = (0..reps)
                .filter_map(|r| {
                    let k = knee(samples, c, r)?;
                    sweep_points(samples, c, r)
                        .into_iter()
                        .filter(|(pps, _)| *pps <= k.pps)
                        .map(|(_, x)| x)
                        .min_by(f64::total_cmp)
                })
                .min_by(f64::total_cmp);
            let row = Row {
                tcp1: tcp(1),
                tcp4: tcp(4),
                udp_pps: med(&|s| s.udp.map(|u| u.delivered_pps)),
                offered_pps: med(&|s| s.udp.map(|u| u.offered_pps)),
                completeness_max: med(&Sample::completeness),
                mirrored_pps: med(&|s| Some(s.outcome.captured? as f64 / s.udp?.seconds)),
                knee: knee_median,
                below_knee_min,
                bytes_tcp1: tcp_median(1, Sample::byte_completeness),
                bytes_tcp4: tcp_median(4, Sample::byte_completeness),
                prog_ns: median(
                    of(|m| *m == Measure::ProgRun)
                        .iter()
                        .filter_map(|s| s.prog_run_ns)
                        .collect(),
                ),
                prog_floor_ns: median(
                    of(|m| *m == Measure::ProgRun)
                        .iter()
                        .filter_map(|s| s.prog_floor_ns)
                        .collect(),
                ),
                hook_ns: median(
                    cost.iter()
                        .filter_map(|s| {
                            let (ns, cnt) = s.hook_run?;
                            (cnt > 0).then(|| ns as f64 / cnt as f64)
                        })
                        .collect(),
                ),
                copier_ns_per_copy: med(&|s| {
                    let copies = s
                        .outcome
                        .captured
                        .or_else(|| s.outcome.agent.get("mirrored").copied())?;
                    Some(s.copier_cpu_ns? / copies as f64).filter(|_| copies > 0)
                }),
                softirq_ns_per_pkt: med(&|s| {
                    let frames = s.outcome.hook_frames;
                    (frames > 0).then(|| s.softirq_ns / frames as f64)
                }),
                rss_mib: med(&|s| Some(s.memory_kib?.0 as f64 / 1024.0)),
                hwm_mib: med(&|s| Some(s.memory_kib?.1 as f64 / 1024.0)),
                filtered_share: agent_share("filtered"),
                lost_share: agent_share("lost"),
                lost_ring_share: agent_share("lost_ring_full"),
                lost_queue_share: agent_share("lost_queue_full"),
                lost_send_share: agent_share("lost_send_error"),
            };
            rows.insert(c, row);
        }
        let sweep = samples
            .iter()
            .filter(|s| {
                matches!(s.measure, Measure::Sweep(_) | Measure::UdpMax) && s.config.mirrors()
            })
            .filter_map(|s| Some((s.config, s.rep, s.udp?.offered_pps, s.completeness()?)))
            .collect();
        Self {
            rows,
            configs,
            reps,
            sweep,
        }
    }

    pub fn row(&self, c: Config) -> &Row {
        static EMPTY: std::sync::OnceLock<Row> = std::sync::OnceLock::new();
        self.rows
            .get(&c)
            .unwrap_or_else(|| EMPTY.get_or_init(Row::default))
    }

    /// `value(config) / value(no hook)`.
    pub fn ratio(&self, c: Config, value: impl Fn(&Row) -> Option<f64>) -> Option<f64> {
        let base = value(self.row(Config::NoHook))?;
        (base > 0.0).then_some(value(self.row(c))? / base)
    }
}

/// (offered pps, completeness) of a configuration's UDP runs in one repetition.
fn sweep_points(samples: &[Sample], c: Config, rep: usize) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter(|s| s.config == c && s.rep == rep)
        .filter(|s| matches!(s.measure, Measure::Sweep(_) | Measure::UdpMax))
        .filter_map(|s| Some((s.udp?.offered_pps, s.completeness()?)))
        .collect()
}

/// The top of the run of complete rates from the lowest one up: a mirror
/// that loses copies at some rate does not "keep up" above it, even if a
/// faster run happened to be complete (batching makes loss non-monotonic).
pub(crate) fn knee(samples: &[Sample], c: Config, rep: usize) -> Option<Knee> {
    let mut points = sweep_points(samples, c, rep);
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let complete = points.iter().take_while(|(_, x)| *x >= COMPLETE).count();
    let pps = points[..complete].last()?.0;
    Some(Knee {
        pps,
        lower_bound: complete == points.len(),
    })
}
