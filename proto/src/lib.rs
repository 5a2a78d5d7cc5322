//! The gRPC contract between `portwatch-agent` and `portwatch-collector`.
//!
//! Generated from `proto/portwatch/v1/portwatch.proto`; the `.proto` file is the
//! documentation of every message and field.

/// Version 1 of the agent <-> collector protocol.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("portwatch.v1");
}
