//! The `tta.v1` wire contract: prost messages and tonic clients/servers generated from
//! `proto/tta/v1`, plus the encoded descriptor set that servers hand to gRPC reflection.
//!
//! Nothing here validates or interprets data; conversion to domain types happens once, in
//! `tta-types`, at the edge of each service.

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

/// Generated code for protobuf package `tta.v1`.
pub mod v1 {
    tonic::include_proto!("tta.v1");
}

/// The encoded `FileDescriptorSet` of every `tta.v1` file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tta_v1_descriptor.bin"));

/// Fully qualified names of the gRPC services in the contract.
pub mod service_names {
    pub const ORCHESTRATOR: &str = "tta.v1.Orchestrator";
    pub const BROKER: &str = "tta.v1.Broker";
    pub const TOOL_REGISTRY: &str = "tta.v1.ToolRegistry";
    pub const RESOURCE_MONITOR: &str = "tta.v1.ResourceMonitor";
    pub const AGENT_REGISTRY: &str = "tta.v1.AgentRegistry";
    pub const SAFETY: &str = "tta.v1.Safety";
    pub const TOOL_EXECUTOR: &str = "tta.v1.ToolExecutor";
}
