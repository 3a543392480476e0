//! The project's own load generator for gRPC (no well-kept one fits a typed, mTLS, per-method
//! identity call): `concurrency` clients, each on its own mTLS connection as the gateway's
//! workload, calling `GetOrder` back to back (or pausing `think` after each answer) for
//! `duration`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ordermesh_contracts::order::GetOrderRequest;
use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_platform::client::ChannelFactory;
use ordermesh_platform::config::MeshConfig;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::user_context::{ROLE_USER, USER_ID_KEY, USER_ROLES_KEY};

use crate::measure::Measured;

pub struct GetOrderLoad {
    pub mesh: MeshConfig,
    pub endpoint: String,
    pub order_name: String,
    pub user_id: String,
}

impl GetOrderLoad {
    pub async fn run(
        &self,
        concurrency: usize,
        duration: Duration,
        think: Option<Duration>,
    ) -> anyhow::Result<Measured> {
        let factory = ChannelFactory::new(&self.mesh, Arc::new(Metrics::new()))?;
        let mut clients = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let mut client =
                OrderServiceClient::new(factory.channel(workloads::ORDER, &self.endpoint)?);
            // Connect (and handshake) before the clock starts, as wrk does.
            client.get_order(self.request()?).await?;
            clients.push(client);
        }
        let started = Instant::now();
        let until = started + duration;
        let tasks = clients.into_iter().map(|mut client| {
            let request = self.request();
            tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
                let mut errors = 0u64;
                let request = request?;
                while Instant::now() < until {
                    let sent = Instant::now();
                    let ok = client.get_order(clone_request(&request)).await.is_ok();
                    h.record(sent.elapsed().as_micros() as u64)?;
                    if !ok {
                        errors += 1;
                    }
                    if let Some(think) = think {
                        tokio::time::sleep(think).await;
                    }
                }
                anyhow::Ok((h, errors))
            })
        });
        let mut total = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut errors = 0;
        for done in futures::future::join_all(tasks).await {
            let (h, e) = done??;
            total.add(&h)?;
            errors += e;
        }
        Ok(Measured::from_histogram(&total, errors, started.elapsed()))
    }

    fn request(&self) -> anyhow::Result<tonic::Request<GetOrderRequest>> {
        let mut req = tonic::Request::new(GetOrderRequest {
            name: self.order_name.clone(),
        });
        req.metadata_mut()
            .insert(USER_ID_KEY, self.user_id.parse()?);
        req.metadata_mut()
            .insert(USER_ROLES_KEY, ROLE_USER.parse()?);
        Ok(req)
    }
}

fn clone_request(r: &tonic::Request<GetOrderRequest>) -> tonic::Request<GetOrderRequest> {
    let mut req = tonic::Request::new(r.get_ref().clone());
    *req.metadata_mut() = r.metadata().clone();
    req
}
