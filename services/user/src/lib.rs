//! user-service: who a user is and how they prove it.

pub mod accounts;
pub mod api_keys;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod login_throttle;
pub mod password_resets;
pub mod revocations;
pub mod sessions;
pub mod store;
pub mod tokens;

pub use grpc::UserServer;
pub use keys::SigningKeys;
pub use store::UserStore;
