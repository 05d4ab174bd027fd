//! What a pin directory holds, read from the kernel without touching it:
//! every pinned hook (its link and program ids), each interface's config
//! and counters, the ring's fill, and the labels that say which pod and
//! policy an interface is. `mirror-agent status` prints this; it needs no
//! API server, and works while an agent runs (nothing is locked or
//! written) or after it stopped (the pinned hooks go on copying).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::links::{FdLink, LinkType, PinnedLink},
};
use mirror_common::{
    ABI_VERSION, Counters, DIR_EGRESS, DIR_INGRESS, IfaceConfig, IfaceKey, MAP_CONFIG,
    MAP_COUNTERS, MAP_RECORDS,
};
use serde::{Deserialize, Serialize};

use crate::{
    kernel::{
        pin::{PinDir, PinError},
        ring::{Ring, largest},
    },
    model::record::IfaceId,
};

/// What an agent notes about each interface it configures (as a label in
/// the pin directory): the kernel knows only indexes and cookies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookLabel {
    pub policy: String,
    /// The interface's name in its namespace.
    pub interface: String,
    /// The pod (`NAMESPACE/POD`) under `run`, else the name again.
    pub label: String,
}

impl HookLabel {
    pub fn to_text(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("{path}: {reason}")]
    Map { path: String, reason: String },
}

/// Everything `status` shows, ready to print or serialize.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedState {
    pub pin_dir: String,
    pub abi_version: u32,
    /// Whether an agent holds the directory now. Without one the hooks go
    /// on filling the ring until it is full (then counted as `ringFull`).
    pub agent_running: bool,
    /// None when this ABI version's maps are not pinned (no agent of this
    /// version ran here).
    pub ring: Option<RingFill>,
    pub interfaces: Vec<InterfaceState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingFill {
    /// Bytes written by the hooks and not yet released by an agent, over
    /// every tenant's ring.
    pub used_bytes: u64,
    pub size_bytes: u64,
}

/// One interface: its hooks, config and counters, each as found (a hook
/// without config, or config without a hook, is shown as it is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceState {
    pub netns_cookie: u64,
    pub ifindex: u32,
    /// From the label; None when no agent noted it.
    pub name: Option<String>,
    pub pod: Option<String>,
    pub policy: Option<String>,
    pub policy_id: Option<u32>,
    /// Hook directions configured (`ingress`, `egress`), as the interface
    /// sees them.
    pub directions: Vec<String>,
    pub snaplen: Option<u32>,
    pub sample_every: Option<u32>,
    pub hooks: Vec<HookState>,
    pub counters: Option<CounterState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `tcx`, or the kernel's name of another link type.
    pub mode: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub program: Option<String>,
    /// Why the link could not be read (its interface was deleted, ...).
    pub error: Option<String>,
}

/// The hook's counters for one interface, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterState {
    pub seen_packets: u64,
    pub seen_bytes: u64,
    pub mirrored_packets: u64,
    pub mirrored_bytes: u64,
    pub truncated: u64,
    pub sampled_out: u64,
    pub ring_full: u64,
    pub load_failed: u64,
    pub own_traffic: u64,
    pub filtered: u64,
    #[serde(default)]
    pub rate_limited: u64,
}

impl From<Counters> for CounterState {
    fn from(c: Counters) -> Self {
        Self {
            seen_packets: c.seen_packets,
            seen_bytes: c.seen_bytes,
            mirrored_packets: c.mirrored_packets,
            mirrored_bytes: c.mirrored_bytes,
            truncated: c.truncated,
            sampled_out: c.sampled_out,
            ring_full: c.ring_full,
            load_failed: c.load_failed,
            own_traffic: c.own_traffic,
            filtered: c.filtered,
            rate_limited: c.rate_limited,
        }
    }
}

/// Reads the pin directory at `root` and what its pins refer to.
pub fn read(root: &Path) -> Result<PinnedState, InspectError> {
    let pins = PinDir::inspect(root)?;
    let maps = pins.maps_dir();
    let configs = if maps.join(MAP_CONFIG).exists() {
        read_configs(&maps.join(MAP_CONFIG))?
    } else {
        BTreeMap::new()
    };
    let counters_map = maps.join(MAP_COUNTERS);
    let counters = counters_map
        .exists()
        .then(|| open(&counters_map))
        .transpose()?
        .map(|m| {
            PerCpuArray::<MapData, Counters>::try_from(m).map_err(|e| map_err(&counters_map, e))
        })
        .transpose()?;
    let mut links: BTreeMap<IfaceId, Vec<HookState>> = BTreeMap::new();
    for key in pins.links()? {
        links
            .entry(key.iface)
            .or_default()
            .push(hook_state(&pins.link(key), key.ingress));
    }
    let labels: BTreeMap<IfaceId, HookLabel> = pins
        .labels()?
        .into_iter()
        .filter_map(|(id, text)| Some((id, serde_json::from_str(&text).ok()?)))
        .collect();
    let ids: BTreeSet<IfaceId> = configs.keys().chain(links.keys()).copied().collect();
    let interfaces = ids
        .into_iter()
        .map(|id| {
            let config = configs.get(&id);
            let label = labels.get(&id);
            let counters = match (config, &counters) {
                (Some(c), Some(map)) => map.get(&c.counter_slot, 0).ok().map(|per_cpu| {
                    let mut sum = Counters::default();
                    for c in per_cpu.iter() {
                        sum.add(c);
                    }
                    CounterState::from(sum)
                }),
                _ => None,
            };
            let mut hooks = links.remove(&id).unwrap_or_default();
            hooks.sort_by(|a, b| a.direction.cmp(&b.direction));
            InterfaceState {
                netns_cookie: id.netns.0,
                ifindex: id.index.0,
                name: label.map(|l| l.interface.clone()),
                pod: label
                    .filter(|l| l.label != l.interface)
                    .map(|l| l.label.clone()),
                policy: label.map(|l| l.policy.clone()),
                policy_id: config.map(|c| c.policy_id),
                directions: config
                    .map(|c| direction_names(c.directions))
                    .unwrap_or_default(),
                snaplen: config.map(|c| c.snaplen),
                sample_every: config.map(|c| c.sample_every),
                hooks,
                counters,
            }
        })
        .collect();
    let mut rings = Vec::new();
    for name in MAP_RECORDS {
        let ring_path = maps.join(name);
        if !ring_path.exists() {
            continue;
        }
        let Map::RingBuf(data) = open(&ring_path)? else {
            return Err(map_err(&ring_path, "not a ring buffer"));
        };
        rings.push(Ring::new(data).map_err(|e| map_err(&ring_path, e))?);
    }
    // The tenants' rings; those no slot uses (a page each) hold nothing.
    let sizes: Vec<u64> = rings.iter().map(Ring::size).collect();
    let ring = (!rings.is_empty()).then(|| {
        largest(&sizes).fold(
            RingFill {
                used_bytes: 0,
                size_bytes: 0,
            },
            |f, i| RingFill {
                used_bytes: f.used_bytes + rings[i].pending(),
                size_bytes: f.size_bytes + rings[i].size(),
            },
        )
    });
    Ok(PinnedState {
        pin_dir: root.display().to_string(),
        abi_version: ABI_VERSION,
        agent_running: pins.in_use()?,
        ring,
        interfaces,
    })
}

fn read_configs(path: &Path) -> Result<BTreeMap<IfaceId, IfaceConfig>, InspectError> {
    let map: HashMap<MapData, IfaceKey, IfaceConfig> =
        HashMap::try_from(open(path)?).map_err(|e| map_err(path, e))?;
    let mut found = BTreeMap::new();
    // An entry removed while we iterate is simply not shown.
    for (key, config) in map.iter().flatten() {
        found.insert(IfaceId::from_key(key), config);
    }
    Ok(found)
}

fn open(path: &Path) -> Result<Map, InspectError> {
    let data = MapData::from_pin(path).map_err(|e| map_err(path, e))?;
    Map::from_map_data(data).map_err(|e| map_err(path, e))
}

fn map_err(path: &Path, reason: impl ToString) -> InspectError {
    InspectError::Map {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn hook_state(path: &Path, ingress: bool) -> HookState {
    let direction = if ingress { "ingress" } else { "egress" }.to_owned();
    let info = PinnedLink::from_pin(path)
        .map(FdLink::from)
        .and_then(|link| link.info());
    match info {
        Ok(info) => {
            let mode = match info.link_type() {
                Ok(LinkType::Tcx) => "tcx".to_owned(),
                Ok(other) => format!("{other:?}").to_lowercase(),
                Err(_) => "unknown".to_owned(),
            };
            let program = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == info.program_id())
                .and_then(|p| p.name_as_str().map(str::to_owned));
            HookState {
                direction,
                mode,
                link_id: Some(info.id()),
                program_id: Some(info.program_id()),
                program,
                error: None,
            }
        }
        Err(e) => HookState {
            direction,
            mode: "unknown".to_owned(),
            link_id: None,
            program_id: None,
            program: None,
            error: Some(e.to_string()),
        },
    }
}

fn direction_names(bits: u32) -> Vec<String> {
    [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")]
        .into_iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| name.to_owned())
        .collect()
}
