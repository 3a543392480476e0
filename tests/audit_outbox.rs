//! audit-service and the outbox end to end over mTLS: no event lost while audit is down,
//! none duplicated when the relay resends, and any edit behind the service's back is found.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ordermesh::roles::Role;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::audit::{
    AppendRequest, AuditRecord, ListEventsRequest, TailEventsRequest, VerifyChainRequest,
};
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::outbox::{self, Destination, Outbox};
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::schema::{self, StoreConfig};
use ordermesh_platform::store::{Condition, NewItem, Query, Table, Write};
use ordermesh_tests::mesh::{RunningService, TestCerts};
use prost::Message;

fn operator(certs: &TestCerts, addr: SocketAddr) -> AuditServiceClient<MeshChannel> {
    AuditServiceClient::new(certs.channel(workloads::OPERATOR, workloads::AUDIT, addr))
}

async fn all_records(client: &mut AuditServiceClient<MeshChannel>) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_events(ListEventsRequest {
                page_size: 7,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// A producer's table with `n` business changes, each committed with its audit event.
async fn business_changes(table: &Table, outbox: &Outbox, from: usize, n: usize) {
    for i in from..from + n {
        let event = outbox.event("users/u1", "order.created", &format!("orders/o{i}"));
        table
            .write(
                vec![Write::put(
                    NewItem::new(
                        format!("order#{i}"),
                        "order",
                        format!("order {i}").into_bytes(),
                    ),
                    Condition::NotExists,
                )]
                .into_iter()
                .chain(outbox.writes(event))
                .collect(),
            )
            .await
            .expect("business change commits whether or not audit is up");
        outbox.notify();
    }
}

async fn wait_until_delivered(table: &Table) {
    for _ in 0..300 {
        if outbox::pending_count(table).await.unwrap() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("outbox not drained within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_audit_is_down_arrive_exactly_once() {
    let certs = TestCerts::new();
    let audit_data = tempfile::tempdir().unwrap();
    let producer_data = tempfile::tempdir().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, audit_data.path()).await;
    let audit_addr = audit.grpc_addr;

    let producer = StoreConfig::Embedded {
        data_dir: producer_data.path().to_path_buf(),
    }
    .open(schema::ORDERS)
    .await
    .unwrap();
    let outbox = Outbox::new(workloads::ORDER);
    let relay_stop = Shutdown::new();
    let relay = outbox.spawn_relay(
        producer.clone(),
        Destination::Audit(AuditServiceClient::new(certs.channel(
            workloads::ORDER,
            workloads::AUDIT,
            audit_addr,
        ))),
        relay_stop.clone(),
    );

    business_changes(&producer, &outbox, 0, 20).await;
    wait_until_delivered(&producer).await;

    // Audit goes away; business goes on.
    audit.stop().await;
    business_changes(&producer, &outbox, 20, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox::pending_count(&producer).await.unwrap(),
        30,
        "kept while audit is down"
    );
    let orders = producer.query(Query::partition("order#25")).await.unwrap();
    assert_eq!(
        orders.items.len(),
        1,
        "the business change itself committed"
    );

    // Audit comes back on the same address and data; the relay catches up.
    let audit = RunningService::start_at(Role::Audit, &certs, audit_data.path(), audit_addr).await;
    wait_until_delivered(&producer).await;

    let mut op = operator(&certs, audit.grpc_addr);
    let records = all_records(&mut op).await;
    assert_eq!(records.len(), 50);
    let mut per_resource: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *per_resource
            .entry(r.event.as_ref().unwrap().resource.clone())
            .or_default() += 1;
    }
    assert_eq!(per_resource.len(), 50);
    assert!(
        per_resource.values().all(|n| *n == 1),
        "each event exactly once"
    );
    let seqs: Vec<i64> = records.iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let verdict = op
        .verify_chain(VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.records_checked, 50);

    relay_stop.trigger();
    relay.await.unwrap();
    audit.stop().await;
}

#[tokio::test]
async fn a_resent_batch_is_stored_once() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, data.path()).await;
    let outbox = Outbox::new(workloads::PAYMENT);
    let events: Vec<_> = (0..5)
        .map(|i| outbox.event("users/u2", "payment.charged", &format!("payments/p{i}")))
        .collect();
    let mut payment = AuditServiceClient::new(certs.channel(
        workloads::PAYMENT,
        workloads::AUDIT,
        audit.grpc_addr,
    ));
    let first = payment
        .append(AppendRequest {
            events: events[..3].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.appended, first.duplicates), (3, 0));
    // A relay that crashed after Append but before deleting sends everything again.
    let again = payment
        .append(AppendRequest {
            events: events.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.appended, again.duplicates), (2, 3));
    let mut op = operator(&certs, audit.grpc_addr);
    assert_eq!(all_records(&mut op).await.len(), 5);
    assert!(
        op.verify_chain(VerifyChainRequest {})
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    audit.stop().await;
}

#[tokio::test]
async fn query_filters_by_actor_resource_action_and_time() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, data.path()).await;
    let outbox = Outbox::new(workloads::USER);
    let mut events = Vec::new();
    for i in 0..12 {
        let actor = if i % 3 == 0 { "users/a" } else { "users/b" };
        let action = if i % 2 == 0 {
            "user.login"
        } else {
            "user.login_failed"
        };
        events.push(outbox.event(actor, action, &format!("users/r{}", i % 4)));
    }
    let mut user =
        AuditServiceClient::new(certs.channel(workloads::USER, workloads::AUDIT, audit.grpc_addr));
    user.append(AppendRequest { events }).await.unwrap();
    let mut op = operator(&certs, audit.grpc_addr);
    let list = |actor: &str, resource: &str, action: &str| ListEventsRequest {
        actor: actor.into(),
        resource: resource.into(),
        action: action.into(),
        page_size: 2,
        ..Default::default()
    };
    let count = |req: ListEventsRequest| {
        let mut op = op.clone();
        async move {
            let mut req = req;
            let mut n = 0;
            loop {
                let page = op.list_events(req.clone()).await.unwrap().into_inner();
                assert!(page.records.len() <= 2);
                n += page.records.len();
                if page.next_page_token.is_empty() {
                    return n;
                }
                req.page_token = page.next_page_token;
            }
        }
    };
    assert_eq!(count(list("users/a", "", "")).await, 4);
    assert_eq!(count(list("users/b", "", "user.login")).await, 4);
    assert_eq!(count(list("", "users/r1", "")).await, 3);
    assert_eq!(count(list("", "", "user.login_failed")).await, 6);
    let future = prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    };
    let none = op
        .list_events(ListEventsRequest {
            start_time: Some(future),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.records.is_empty());
    let bad = op
        .list_events(ListEventsRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    audit.stop().await;
}

#[tokio::test]
async fn tail_follows_new_events() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, data.path()).await;
    let mut op = operator(&certs, audit.grpc_addr);
    let mut tail = op
        .tail_events(TailEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let outbox = Outbox::new(workloads::ORDER);
    let mut order =
        AuditServiceClient::new(certs.channel(workloads::ORDER, workloads::AUDIT, audit.grpc_addr));
    let events: Vec<_> = (0..3)
        .map(|i| outbox.event("users/u", "order.shipped", &format!("orders/{i}")))
        .collect();
    order.append(AppendRequest { events }).await.unwrap();
    for want in 1..=3 {
        let got = tokio::time::timeout(Duration::from_secs(10), tail.message())
            .await
            .expect("tail delivers within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(got.sequence, want);
    }
    drop(tail);
    audit.stop().await;
}

#[tokio::test]
async fn an_edit_or_a_deletion_behind_the_services_back_is_reported() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, data.path()).await;
    let outbox = Outbox::new(workloads::PAYMENT);
    let events: Vec<_> = (0..8)
        .map(|i| outbox.event("users/u", "payment.refunded", &format!("payments/{i}")))
        .collect();
    let mut payment = AuditServiceClient::new(certs.channel(
        workloads::PAYMENT,
        workloads::AUDIT,
        audit.grpc_addr,
    ));
    payment.append(AppendRequest { events }).await.unwrap();
    let addr = audit.grpc_addr;
    audit.stop().await;

    // Someone with access to the data edits record 4: the amount of a refund, say.
    let table = StoreConfig::Embedded {
        data_dir: data.path().to_path_buf(),
    }
    .open(schema::AUDIT)
    .await
    .unwrap();
    let key = format!("{:020}", 4);
    let item = table
        .get("rec", &key)
        .await
        .unwrap()
        .expect("record 4 stored");
    let mut record = AuditRecord::decode(item.data.as_ref()).unwrap();
    record
        .event
        .as_mut()
        .unwrap()
        .attributes
        .insert("amount".into(), "1".into());
    table
        .put(
            NewItem::new("rec", key, record.encode_to_vec()),
            Condition::Version(item.version),
        )
        .await
        .unwrap();
    drop(table);

    let audit = RunningService::start_at(Role::Audit, &certs, data.path(), addr).await;
    let mut op = operator(&certs, audit.grpc_addr);
    let verdict = op
        .verify_chain(VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!verdict.ok);
    assert_eq!(verdict.first_broken_sequence, 4, "{verdict:?}");
    assert!(verdict.detail.contains("altered"), "{}", verdict.detail);
    audit.stop().await;

    // And a deleted record breaks the link after it.
    let table = StoreConfig::Embedded {
        data_dir: data.path().to_path_buf(),
    }
    .open(schema::AUDIT)
    .await
    .unwrap();
    table
        .delete("rec", &format!("{:020}", 6), Condition::Exists)
        .await
        .unwrap();
    drop(table);
    let audit = RunningService::start_at(Role::Audit, &certs, data.path(), addr).await;
    let verdict = operator(&certs, audit.grpc_addr)
        .verify_chain(VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!verdict.ok);
    assert_eq!(
        verdict.first_broken_sequence, 4,
        "the first break is still the edit"
    );
    audit.stop().await;
}
