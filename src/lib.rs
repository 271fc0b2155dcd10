//! Generated protocol types and gRPC stubs of the rbee hive API.
//!
//! The hive (`rbee-hive`) serves [`hive::v1::hive_service_server::HiveService`]; the keeper CLI
//! (`rbee`) and any other client use [`hive::v1::hive_service_client::HiveServiceClient`].

/// Package `rbee.hive.v1`.
pub mod hive {
    /// Version 1 of the hive API.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("rbee.hive.v1");
    }
}

pub use hive::v1;

/// Encoded `FileDescriptorSet` of `rbee.hive.v1` and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rbee_descriptor.bin"));

/// Metadata key under which the hive returns the job id of a failed request.
pub const JOB_ID_METADATA_KEY: &str = "rbee-job-id";

/// Address the hive listens on when none is given: loopback only, port 7835.
pub const DEFAULT_HIVE_ADDR: &str = "127.0.0.1:7835";
