//! order-service: what can be bought, and the life of an order.

pub mod catalog;
pub mod grpc;
pub mod orders;
pub mod payments;
pub mod saga;

pub use grpc::{CatalogServer, OrderServer};
pub use saga::{OrderSaga, SagaSettings};
