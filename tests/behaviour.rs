//! The behaviour tests, one module per behaviour, in one test binary: the doubles of
//! `support/` and the crate's dependencies are compiled and linked once, not once per file.
//! `cargo test <module>::` runs one behaviour (for example `cargo test lockdown::`).

mod support;

mod admin;
mod audit_annotations;
mod audit_events;
mod audit_examples;
mod audit_redaction;
mod audit_sinks;
mod authentication;
mod authorization;
mod bind_retry;
mod coalescing;
mod config_file;
mod demo;
mod embedded_mode;
mod fail_closed;
mod header_hygiene;
mod hostile_callers;
mod http2;
mod image;
mod interactive;
mod kubelet_connections;
mod limits;
mod lockdown;
mod manifests;
mod modes;
mod monitoring;
mod node_pki;
mod observe_refusals;
mod path_confusion;
mod pod_scope;
mod rbac_audit;
mod rbac_audit_admission_policy;
mod rbac_audit_cluster;
mod rbac_audit_outputs;
mod rbac_audit_suggestions;
mod rotation;
mod shutdown;
mod startup;
mod streaming;
mod support_selftest;
mod tls_policy;
mod upgrades;
