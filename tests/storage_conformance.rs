//! One conformance suite for both storage backends: every case runs against the embedded
//! store and against a real DynamoDB-compatible server on loopback.

use std::sync::Arc;

use ordermesh_platform::store::{
    Condition, Cursor, KeyRange, NewItem, Query, StoreError, Table, Write, now_unix,
};

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (table, _dir) = ordermesh_tests::stores::embedded_table("users");
                    super::$case(table).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let table = ordermesh_tests::stores::dynamo_table("users").await;
                    super::$case(table).await;
                }
            )*
        }
    };
}

conformance!(
    conditional_puts_bump_versions,
    conditional_deletes,
    query_ranges_and_pages_without_gaps_or_repeats,
    index_query_newest_first_follows_updates,
    failed_batch_writes_nothing,
    concurrent_conditional_writers_exactly_one_wins,
    expired_items_are_gone,
    bad_input_is_rejected_clearly,
);

fn data(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

async fn conditional_puts_bump_versions(t: Table) {
    let v1 = t
        .put(
            NewItem::new("user#1", "profile", data("a")),
            Condition::NotExists,
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let got = t.get("user#1", "profile").await.unwrap().unwrap();
    assert_eq!((got.version, got.data), (1, data("a")));
    assert!(
        t.put(
            NewItem::new("user#1", "profile", data("x")),
            Condition::NotExists
        )
        .await
        .unwrap_err()
        .is_condition_failed()
    );
    let v2 = t
        .put(
            NewItem::new("user#1", "profile", data("b")),
            Condition::Version(1),
        )
        .await
        .unwrap();
    assert_eq!(v2, 2);
    let stale = t
        .put(
            NewItem::new("user#1", "profile", data("c")),
            Condition::Version(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StoreError::ConditionFailed { index: 0, .. }),
        "{stale}"
    );
    let v3 = t
        .put(
            NewItem::new("user#1", "profile", data("d")),
            Condition::Exists,
        )
        .await
        .unwrap();
    assert_eq!(v3, 3);
    let got = t.get("user#1", "profile").await.unwrap().unwrap();
    assert_eq!((got.version, got.data), (3, data("d")));
    assert!(
        t.put(
            NewItem::new("user#2", "profile", data("e")),
            Condition::Exists
        )
        .await
        .unwrap_err()
        .is_condition_failed()
    );
    assert_eq!(t.get("user#2", "profile").await.unwrap(), None);
}

async fn conditional_deletes(t: Table) {
    t.put(NewItem::new("p", "s", data("a")), Condition::NotExists)
        .await
        .unwrap();
    assert!(
        t.delete("p", "s", Condition::Version(7))
            .await
            .unwrap_err()
            .is_condition_failed()
    );
    assert!(t.get("p", "s").await.unwrap().is_some());
    t.delete("p", "s", Condition::Version(1)).await.unwrap();
    assert_eq!(t.get("p", "s").await.unwrap(), None);
    assert!(
        t.delete("p", "s", Condition::Exists)
            .await
            .unwrap_err()
            .is_condition_failed()
    );
}

async fn query_ranges_and_pages_without_gaps_or_repeats(t: Table) {
    for i in 0..25 {
        t.put(
            NewItem::new("orders", format!("item#{i:02}"), data(&i.to_string())),
            Condition::NotExists,
        )
        .await
        .unwrap();
    }
    t.put(
        NewItem::new("orders", "other#1", data("x")),
        Condition::NotExists,
    )
    .await
    .unwrap();
    t.put(
        NewItem::new("orders-2", "item#00", data("x")),
        Condition::NotExists,
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = t
            .query(
                Query::partition("orders")
                    .range(KeyRange::Prefix("item#".into()))
                    .limit(10)
                    .after(cursor),
            )
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|i| i.sk.clone()));
        // The token a client would carry round-trips through its string form.
        cursor = match page.next {
            Some(c) => Some(Cursor::decode(&c.encode()).unwrap()),
            None => break,
        };
    }
    let expected: Vec<String> = (0..25).map(|i| format!("item#{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);

    let desc = t
        .query(
            Query::partition("orders")
                .range(KeyRange::Prefix("item#".into()))
                .descending()
                .limit(3),
        )
        .await
        .unwrap();
    let sks: Vec<_> = desc.items.iter().map(|i| i.sk.as_str()).collect();
    assert_eq!(sks, ["item#24", "item#23", "item#22"]);
    let rest = t
        .query(
            Query::partition("orders")
                .range(KeyRange::Prefix("item#".into()))
                .descending()
                .limit(3)
                .after(desc.next),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].sk, "item#21");

    let between = t
        .query(
            Query::partition("orders").range(KeyRange::Between("item#05".into(), "item#07".into())),
        )
        .await
        .unwrap();
    let sks: Vec<_> = between.items.iter().map(|i| i.sk.as_str()).collect();
    assert_eq!(sks, ["item#05", "item#06", "item#07"]);
    assert_eq!(between.next, None);

    let all = t.query(Query::partition("orders")).await.unwrap();
    assert_eq!(all.items.len(), 26);
}

async fn index_query_newest_first_follows_updates(t: Table) {
    for i in 0..7 {
        t.put(
            NewItem::new(format!("order#{i}"), "order", data(&i.to_string()))
                .with_index("user#alice", format!("2026-11-2{i}T00:00:00Z")),
            Condition::NotExists,
        )
        .await
        .unwrap();
    }
    t.put(
        NewItem::new("order#bob", "order", data("b"))
            .with_index("user#bob", "2026-11-21T00:00:00Z"),
        Condition::NotExists,
    )
    .await
    .unwrap();

    let first = t
        .query_index(Query::partition("user#alice").descending().limit(4))
        .await
        .unwrap();
    let ids: Vec<_> = first.items.iter().map(|i| i.pk.as_str()).collect();
    assert_eq!(ids, ["order#6", "order#5", "order#4", "order#3"]);
    let second = t
        .query_index(
            Query::partition("user#alice")
                .descending()
                .limit(4)
                .after(first.next),
        )
        .await
        .unwrap();
    let ids: Vec<_> = second.items.iter().map(|i| i.pk.as_str()).collect();
    assert_eq!(ids, ["order#2", "order#1", "order#0"]);
    assert_eq!(second.next, None);

    // Re-keying an item moves it in the index; the old entry is gone.
    t.put(
        NewItem::new("order#0", "order", data("moved"))
            .with_index("user#bob", "2026-11-01T00:00:00Z"),
        Condition::Version(1),
    )
    .await
    .unwrap();
    let alice = t
        .query_index(Query::partition("user#alice").limit(100))
        .await
        .unwrap();
    assert_eq!(alice.items.len(), 6);
    let bob = t
        .query_index(Query::partition("user#bob").limit(100))
        .await
        .unwrap();
    let ids: Vec<_> = bob.items.iter().map(|i| i.pk.as_str()).collect();
    assert_eq!(ids, ["order#0", "order#bob"]);
    assert_eq!(bob.items[0].data, data("moved"));
}

async fn failed_batch_writes_nothing(t: Table) {
    t.put(
        NewItem::new("wallet#1", "balance", data("100")),
        Condition::NotExists,
    )
    .await
    .unwrap();
    let batch = vec![
        Write::put(
            NewItem::new("ledger#1", "entry#1", data("-30")),
            Condition::NotExists,
        ),
        Write::put(
            NewItem::new("wallet#1", "balance", data("70")),
            Condition::Version(1),
        ),
        // Fails: this idempotency key is not present.
        Write::Check {
            pk: "idem#1".into(),
            sk: "key".into(),
            condition: Condition::Exists,
        },
    ];
    let err = t.write(batch).await.unwrap_err();
    assert!(
        matches!(err, StoreError::ConditionFailed { index: 2, .. }),
        "{err}"
    );
    assert_eq!(t.get("ledger#1", "entry#1").await.unwrap(), None);
    assert_eq!(
        t.get("wallet#1", "balance").await.unwrap().unwrap().data,
        data("100")
    );

    let ok = t
        .write(vec![
            Write::put(
                NewItem::new("ledger#1", "entry#1", data("-30")),
                Condition::NotExists,
            ),
            Write::put(
                NewItem::new("wallet#1", "balance", data("70")),
                Condition::Version(1),
            ),
            Write::Delete {
                pk: "stale".into(),
                sk: "x".into(),
                condition: Condition::None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(ok, vec![1, 2, 0]);
    assert_eq!(
        t.get("wallet#1", "balance").await.unwrap().unwrap().data,
        data("70")
    );
    assert!(t.get("ledger#1", "entry#1").await.unwrap().is_some());
}

async fn concurrent_conditional_writers_exactly_one_wins(t: Table) {
    t.put(
        NewItem::new("order#9", "order", data("PENDING")),
        Condition::NotExists,
    )
    .await
    .unwrap();
    let t = Arc::new(t);
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                t.write(vec![
                    Write::put(
                        NewItem::new("order#9", "order", data(&format!("by-{i}"))),
                        Condition::Version(1),
                    ),
                    Write::put(
                        NewItem::new("order#9", format!("event#{i}"), data("transition")),
                        Condition::NotExists,
                    ),
                ])
                .await
            })
        })
        .collect();
    let mut wins = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert!(
                e.is_condition_failed() || matches!(e, StoreError::Conflict),
                "unexpected error {e}"
            ),
        }
    }
    assert_eq!(wins, 1);
    let events = t
        .query(Query::partition("order#9").range(KeyRange::Prefix("event#".into())))
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1, "the losers wrote nothing");
    assert_eq!(t.get("order#9", "order").await.unwrap().unwrap().version, 2);
}

async fn expired_items_are_gone(t: Table) {
    let past = now_unix() - 10;
    let future = now_unix() + 3600;
    t.put(
        NewItem::new("idem", "old", data("r1")).expiring_at(past),
        Condition::NotExists,
    )
    .await
    .unwrap();
    t.put(
        NewItem::new("idem", "new", data("r2")).expiring_at(future),
        Condition::NotExists,
    )
    .await
    .unwrap();
    assert_eq!(t.get("idem", "old").await.unwrap(), None);
    assert_eq!(
        t.get("idem", "new").await.unwrap().unwrap().expires_at,
        Some(future)
    );
    let page = t.query(Query::partition("idem")).await.unwrap();
    let sks: Vec<_> = page.items.iter().map(|i| i.sk.as_str()).collect();
    assert_eq!(sks, ["new"]);
    // An expired record no longer blocks its key.
    assert_eq!(
        t.put(
            NewItem::new("idem", "old", data("r3")),
            Condition::NotExists
        )
        .await
        .unwrap(),
        1
    );
}

async fn bad_input_is_rejected_clearly(t: Table) {
    assert!(matches!(
        t.get("", "x").await,
        Err(StoreError::InvalidKey(_))
    ));
    assert!(matches!(
        t.get("a\0b", "x").await,
        Err(StoreError::InvalidKey(_))
    ));
    assert!(matches!(
        t.query(Query::partition("p").limit(0)).await,
        Err(StoreError::InvalidQuery(_))
    ));
    assert!(matches!(
        Cursor::decode("not a token"),
        Err(StoreError::InvalidCursor)
    ));
    let foreign = Cursor {
        pk: "other".into(),
        sk: "x".into(),
        ipk: None,
        isk: None,
    };
    assert!(matches!(
        t.query(Query::partition("p").after(Some(foreign))).await,
        Err(StoreError::InvalidCursor)
    ));
    let dup = vec![
        Write::put(NewItem::new("a", "b", data("1")), Condition::None),
        Write::put(NewItem::new("a", "b", data("2")), Condition::None),
    ];
    assert!(matches!(
        t.write(dup).await,
        Err(StoreError::InvalidBatch(_))
    ));
    assert!(matches!(
        t.write(vec![]).await,
        Err(StoreError::InvalidBatch(_))
    ));
    let status: tonic::Status = StoreError::InvalidCursor.into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
