//! ordermesh's contracts: the generated protobuf/gRPC code for every service, the embedded
//! descriptor set, and typed readers for the per-method options (`google.api.http` and
//! `ordermesh.options.v1.access`) that the gateway, the authorization layer and the Istio
//! policy generator all derive from.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod api_key_scopes;
pub mod descriptors;

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod ordermesh {
    pub mod options {
        pub mod v1 {
            tonic::include_proto!("ordermesh.options.v1");
        }
    }
    pub mod r#type {
        pub mod v1 {
            tonic::include_proto!("ordermesh.r#type.v1");
        }
    }
    pub mod user {
        pub mod v1 {
            tonic::include_proto!("ordermesh.user.v1");
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("ordermesh.order.v1");
        }
    }
    pub mod payment {
        pub mod v1 {
            tonic::include_proto!("ordermesh.payment.v1");
        }
    }
    pub mod audit {
        pub mod v1 {
            tonic::include_proto!("ordermesh.audit.v1");
        }
    }
    pub mod notification {
        pub mod v1 {
            tonic::include_proto!("ordermesh.notification.v1");
        }
    }
}

pub use ordermesh::audit::v1 as audit;
pub use ordermesh::notification::v1 as notification;
pub use ordermesh::options::v1 as options;
pub use ordermesh::order::v1 as order;
pub use ordermesh::payment::v1 as payment;
pub use ordermesh::r#type::v1 as types;
pub use ordermesh::user::v1 as user;

/// The encoded `FileDescriptorSet` of every contract and its imports, options included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ordermesh_descriptor.bin"));
