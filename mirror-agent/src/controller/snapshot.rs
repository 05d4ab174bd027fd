//! What the agent sees of the cluster at one moment, as plain data: the
//! input of [`super::desired`], taken from the watch caches of
//! [`super::watch`] or built by hand in tests. And [`PolicyRef`], the name
//! of one policy of either kind, which the status and the plan go by.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};

use crate::k8s::{ClusterMirrorPolicy, MirrorCollector, MirrorPolicy};

/// The objects the desired state is computed from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// This node's pods.
    pub pods: Vec<Arc<Pod>>,
    /// Every namespace, for its labels.
    pub namespaces: Vec<Arc<Namespace>>,
    pub policies: Vec<Arc<MirrorPolicy>>,
    pub cluster_policies: Vec<Arc<ClusterMirrorPolicy>>,
    pub collectors: Vec<Arc<MirrorCollector>>,
    /// The Secrets of the agent's own namespace (TLS collectors' credentials).
    pub secrets: Vec<Arc<Secret>>,
}

/// Which policy, of which kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub cluster: bool,
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    /// Whose ring its copies take: its namespace's, or its own if it is
    /// cluster-wide.
    pub fn tenant(&self) -> crate::datapath::plan::Tenant {
        use crate::datapath::plan::Tenant;
        if self.cluster {
            Tenant::Policy(self.name.clone())
        } else {
            Tenant::Namespace(self.namespace.clone())
        }
    }

    /// The policy's name in the plan, the log and metrics.
    pub fn plan_name(&self) -> String {
        if self.cluster {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}
