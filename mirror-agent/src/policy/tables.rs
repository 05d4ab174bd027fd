//! The kernel's prefix tables (four LPM tries of
//! `mirror_common::MAX_LPM_ENTRIES`, shared by every policy of an agent):
//! what policies put in them, checked before anything is loaded, so a
//! policy with too many CIDRs is refused by name rather than failing a map
//! update half-way through a start or a reload.

use super::{body::PolicyBody, error::Problem, rules::Side};

/// Entries the policies taken so far use, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixTables {
    used: [usize; 4],
}

/// A policy that does not fit: the field to blame (under the policy body,
/// `rules[*].sourceCIDRs`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablesFull {
    pub field: &'static str,
    pub problem: Problem,
}

impl PrefixTables {
    /// The use with `body`'s prefixes added, or which table they overflow.
    /// A policy with no kernel prefilter (more rules than it holds) puts
    /// nothing in them.
    pub fn add(&self, body: &PolicyBody) -> Result<Self, TablesFull> {
        let Some(plan) = body.rules.prefilter_plan() else {
            return Ok(*self);
        };
        let max = mirror_common::MAX_LPM_ENTRIES;
        let tables = [
            (
                "IPv4 source",
                "rules[*].sourceCIDRs",
                plan.lpm_v4(Side::Source).entries.len(),
            ),
            (
                "IPv4 destination",
                "rules[*].destinationCIDRs",
                plan.lpm_v4(Side::Destination).entries.len(),
            ),
            (
                "IPv6 source",
                "rules[*].sourceCIDRs",
                plan.lpm_v6(Side::Source).entries.len(),
            ),
            (
                "IPv6 destination",
                "rules[*].destinationCIDRs",
                plan.lpm_v6(Side::Destination).entries.len(),
            ),
        ];
        let mut out = *self;
        for ((map, field, entries), total) in tables.into_iter().zip(out.used.iter_mut()) {
            *total += entries;
            if *total > max as usize {
                let problem = Problem::PrefixTableFull {
                    map,
                    entries,
                    total: *total,
                    max,
                };
                return Err(TablesFull { field, problem });
            }
        }
        Ok(out)
    }
}
