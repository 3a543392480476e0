//! Which tables exist, and how a process opens its store from configuration.

use std::path::PathBuf;

use super::dynamodb::{self, DynamoSettings, DynamoTable};
use super::embedded::EmbeddedTable;
use super::{StoreError, Table};
use crate::config::{ConfigError, env_opt, env_or};

/// One table per service (single-table design within each).
pub const USERS: &str = "users";
pub const ORDERS: &str = "orders";
pub const PAYMENTS: &str = "payments";
pub const AUDIT: &str = "audit";
pub const NOTIFICATIONS: &str = "notifications";
pub const ALL_TABLES: &[&str] = &[USERS, ORDERS, PAYMENTS, AUDIT, NOTIFICATIONS];

/// Where a process keeps its data.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// `<data_dir>/<table>.redb`.
    Embedded { data_dir: PathBuf },
    /// `<table_prefix><table>` in DynamoDB.
    DynamoDb(DynamoSettings),
    /// Another configuration's tables behind injected failures (fault tests).
    #[cfg(any(test, feature = "faults"))]
    Faulty {
        inner: Box<StoreConfig>,
        faults: super::faults::Faults,
    },
}

impl StoreConfig {
    /// Reads `ORDERMESH_STORE` (`embedded` | `dynamodb`), `ORDERMESH_DATA_DIR`,
    /// `ORDERMESH_DYNAMODB_TABLE_PREFIX`; region, endpoint (`AWS_ENDPOINT_URL_DYNAMODB`) and
    /// credentials come from the standard AWS environment.
    pub fn from_env(default_data_dir: PathBuf) -> Result<Self, ConfigError> {
        let kind: String = env_or("ORDERMESH_STORE", "embedded".to_string())?;
        match kind.as_str() {
            "embedded" => Ok(Self::Embedded {
                data_dir: env_or("ORDERMESH_DATA_DIR", default_data_dir)?,
            }),
            "dynamodb" => Ok(Self::DynamoDb(DynamoSettings {
                table_prefix: env_or("ORDERMESH_DYNAMODB_TABLE_PREFIX", "ordermesh-".to_string())?,
                endpoint: env_opt("ORDERMESH_DYNAMODB_ENDPOINT")?,
                region: None,
                static_credentials: None,
            })),
            other => Err(ConfigError::Invalid {
                var: "ORDERMESH_STORE".into(),
                value: other.into(),
                reason: "expected `embedded` or `dynamodb`".into(),
            }),
        }
    }

    /// Opens one of [`ALL_TABLES`].
    pub async fn open(&self, table: &str) -> Result<Table, StoreError> {
        match self {
            Self::Embedded { data_dir } => {
                Ok(Table::Embedded(EmbeddedTable::open(data_dir, table)?))
            }
            Self::DynamoDb(settings) => {
                let client = dynamodb::client(settings).await;
                Ok(Table::DynamoDb(DynamoTable::new(
                    client,
                    format!("{}{table}", settings.table_prefix),
                )))
            }
            #[cfg(any(test, feature = "faults"))]
            Self::Faulty { inner, faults } => {
                let inner = Box::pin(inner.open(table)).await?;
                Ok(Table::Faulty(std::sync::Arc::new(
                    super::faults::FaultyTable::new(inner, faults.clone()),
                )))
            }
        }
    }

    /// The embedded data directory, when the tables (or those a fault wrapper wraps) are
    /// embedded.
    pub fn embedded_dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Embedded { data_dir } => Some(data_dir),
            Self::DynamoDb(_) => None,
            #[cfg(any(test, feature = "faults"))]
            Self::Faulty { inner, .. } => inner.embedded_dir(),
        }
    }

    /// Creates every table that does not exist yet (DynamoDB), returning the ones created.
    /// Embedded tables are created when first opened.
    pub async fn create_tables(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Embedded { .. } => Ok(Vec::new()),
            #[cfg(any(test, feature = "faults"))]
            Self::Faulty { inner, .. } => Box::pin(inner.create_tables()).await,
            Self::DynamoDb(settings) => {
                let client = dynamodb::client(settings).await;
                let mut created = Vec::new();
                for table in ALL_TABLES {
                    let name = format!("{}{table}", settings.table_prefix);
                    if dynamodb::create_table(&client, &name).await? {
                        created.push(name);
                    }
                }
                Ok(created)
            }
        }
    }
}
