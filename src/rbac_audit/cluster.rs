//! Cluster input: lists ClusterRoles, ClusterRoleBindings, Roles and RoleBindings (every
//! namespace) through `--kubeconfig`, the default kubeconfig, or the in-cluster configuration.
//!
//! Read-only: four paginated `list` calls, which need `list` on those four resources (the
//! bootstrap `view` role does not include them; bind a ClusterRole granting just that). Each
//! object is its own source, located as `cluster`, so one odd object cannot hide the others.

use std::fmt::Debug;
use std::path::Path;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RbacAuditError;
use super::input::Inputs;
use crate::authz::rbac::Document;

/// The source name of every listed object.
const SOURCE: &str = "cluster";

/// Objects per page.
const PAGE: u32 = 500;

/// Lists the cluster's RBAC into inputs.
pub(super) async fn list(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Inputs, RbacAuditError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| RbacAuditError::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| RbacAuditError::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| RbacAuditError::Kubeconfig(e.to_string()))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| RbacAuditError::Kubeconfig(e.to_string()))?,
    };
    let client =
        kube::Client::try_from(config).map_err(|e| RbacAuditError::Kubeconfig(e.to_string()))?;

    let mut inputs = Inputs::new();
    for value in listed::<ClusterRole>(&client, "clusterroles").await? {
        inputs.add_documents(SOURCE, vec![document(value)]);
    }
    for value in listed::<ClusterRoleBinding>(&client, "clusterrolebindings").await? {
        inputs.add_documents(SOURCE, vec![document(value)]);
    }
    for value in listed::<Role>(&client, "roles").await? {
        inputs.add_documents(SOURCE, vec![document(value)]);
    }
    for value in listed::<RoleBinding>(&client, "rolebindings").await? {
        inputs.add_documents(SOURCE, vec![document(value)]);
    }
    Ok(inputs)
}

/// Every object of one kind, page by page, as JSON with its `apiVersion` and `kind`.
async fn listed<K>(
    client: &kube::Client,
    plural: &str,
) -> Result<Vec<serde_json::Value>, RbacAuditError>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize,
{
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    let mut values = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|e| RbacAuditError::Cluster(format!("list {plural}: {e}")))?;
        for object in &page.items {
            let value = serde_json::to_value(object)
                .map_err(|e| RbacAuditError::Cluster(format!("{plural}: {e}")))?;
            values.push(value);
        }
        match page.metadata.continue_.as_deref() {
            Some(token) if !token.is_empty() => params = params.continue_token(token),
            _ => return Ok(values),
        }
    }
}

/// A listed object as a document without a line.
fn document(value: serde_json::Value) -> Document {
    Document {
        line: 0,
        item: None,
        value,
    }
}
