//! What the saga needs from payment-service, as a seam: charging and refunding under a
//! deadline. In the mesh it is payment-service's gRPC client (with the channel's retries and
//! breaker); the saga's unit tests script the outcomes.

use std::time::Duration;

use futures::future::BoxFuture;
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::payment::{ChargeRequest, Payment, RefundRequest};
use ordermesh_platform::client::MeshChannel;
use tonic::Status;

pub trait Payments: Send + Sync {
    fn charge(
        &self,
        req: ChargeRequest,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Payment, Status>>;
    fn refund(
        &self,
        req: RefundRequest,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Payment, Status>>;
}

fn with_deadline<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(deadline);
    req
}

impl Payments for PaymentServiceClient<MeshChannel> {
    fn charge(
        &self,
        req: ChargeRequest,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Payment, Status>> {
        let mut client = self.clone();
        Box::pin(async move {
            PaymentServiceClient::charge(&mut client, with_deadline(req, deadline))
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn refund(
        &self,
        req: RefundRequest,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Payment, Status>> {
        let mut client = self.clone();
        Box::pin(async move {
            PaymentServiceClient::refund(&mut client, with_deadline(req, deadline))
                .await
                .map(tonic::Response::into_inner)
        })
    }
}
