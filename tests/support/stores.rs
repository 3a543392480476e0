//! Fresh, isolated tables on each backend.

use std::sync::atomic::{AtomicU32, Ordering};

use ordermesh_platform::store::Table;
use ordermesh_platform::store::dynamodb::DynamoSettings;
use ordermesh_platform::store::schema::StoreConfig;

/// Settings for the shared moto server with a table prefix unique to this call.
pub fn dynamo_config() -> StoreConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "t{}-{}-",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    StoreConfig::DynamoDb(DynamoSettings {
        table_prefix: prefix,
        endpoint: Some(crate::moto::moto().endpoint.clone()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
}

/// A new DynamoDB table (created on the moto server).
pub async fn dynamo_table(name: &str) -> Table {
    let config = dynamo_config();
    config.create_tables().await.expect("create tables");
    config.open(name).await.expect("open table")
}

/// A new embedded table in its own temporary directory (kept alive by the returned guard).
pub fn embedded_table(name: &str) -> (Table, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    };
    let table = futures::executor::block_on(config.open(name)).expect("open table");
    (table, dir)
}
