//! Writing the node's report: the ConfigMap `jellyfin-ha-agent-<node>`, by server-side apply,
//! so the agent owns exactly the fields it writes and a retry is always safe.

use std::collections::BTreeMap;

use jellyfin_ha_core::busyness::AgentReport;
use jellyfin_ha_core::busyness::report::{
    REPORT_KEY, REPORT_LABELS, REPORT_NODE_LABEL, report_object_name,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "jellyfin-ha-agent";

pub struct Publisher {
    api: Api<ConfigMap>,
    name: String,
    labels: BTreeMap<String, String>,
}

impl Publisher {
    pub fn new(client: Client, namespace: &str, node: &str) -> Self {
        let labels = REPORT_LABELS
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .chain([(REPORT_NODE_LABEL.to_string(), node.to_string())])
            .collect();
        Self {
            api: Api::namespaced(client, namespace),
            name: report_object_name(node),
            labels,
        }
    }

    pub async fn publish(&self, report: &AgentReport) -> anyhow::Result<()> {
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                ..ObjectMeta::default()
            },
            data: Some([(REPORT_KEY.to_string(), serde_json::to_string(report)?)].into()),
            ..ConfigMap::default()
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch(&self.name, &params, &Patch::Apply(&object))
            .await?;
        Ok(())
    }
}
