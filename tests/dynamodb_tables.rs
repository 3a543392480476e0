//! `tables create` against a DynamoDB-compatible server (moto): tables end up ACTIVE with TTL
//! on the expiry attribute, and a re-run converges (a table left without TTL gets it).

use aws_sdk_dynamodb::types::TimeToLiveStatus;
use ordermesh_platform::store::dynamodb;
use ordermesh_platform::store::schema::{ALL_TABLES, StoreConfig};
use ordermesh_tests::stores::dynamo_config;

async fn ttl_status(client: &aws_sdk_dynamodb::Client, table: &str) -> Option<TimeToLiveStatus> {
    client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .expect("describe ttl")
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status().cloned())
}

#[tokio::test]
async fn tables_are_created_with_ttl_and_a_rerun_turns_missing_ttl_on() {
    let config = dynamo_config();
    let StoreConfig::DynamoDb(settings) = &config else {
        unreachable!("dynamo_config is DynamoDB")
    };
    let client = dynamodb::client(settings).await;
    let names: Vec<String> = ALL_TABLES
        .iter()
        .map(|t| format!("{}{t}", settings.table_prefix))
        .collect();

    let created = config.create_tables().await.expect("create tables");
    assert_eq!(created, names, "every table is new");
    for name in &names {
        assert_eq!(
            ttl_status(&client, name).await,
            Some(TimeToLiveStatus::Enabled),
            "{name} has TTL after the first run"
        );
    }

    // As if an earlier run stopped between CreateTable and UpdateTimeToLive.
    client
        .update_time_to_live()
        .table_name(&names[0])
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name("ttl")
                .enabled(false)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("turn TTL off");
    assert_ne!(
        ttl_status(&client, &names[0]).await,
        Some(TimeToLiveStatus::Enabled)
    );

    let again = config.create_tables().await.expect("re-run");
    assert!(again.is_empty(), "nothing new: {again:?}");
    assert_eq!(
        ttl_status(&client, &names[0]).await,
        Some(TimeToLiveStatus::Enabled),
        "the re-run turned TTL back on"
    );
}
