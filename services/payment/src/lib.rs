//! payment-service: money in wallets, moved only by balanced ledger transactions.

pub mod grpc;
pub mod ledger;
pub mod wallets;

pub use grpc::PaymentServer;
pub use wallets::Wallets;
