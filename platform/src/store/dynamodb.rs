//! The DynamoDB backend (aws-sdk-dynamodb): a single table per service with `pk`/`sk` keys, a
//! `gsi1` index on `gsi1pk`/`gsi1sk`, the payload in `d`, the version in `v` and the expiry in
//! `ttl` (DynamoDB's TTL attribute). Conditions are condition expressions, batches are
//! `TransactWriteItems`, pages follow `ExclusiveStartKey`. Throttling and 5xx responses are
//! retried by the SDK's standard retry strategy (exponential backoff with jitter).

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem, Update,
};
use bytes::Bytes;

use super::{
    Condition, Cursor, IndexKey, Item, KeyRange, Order, Page, Query, StoreError, Write, is_live,
    now_unix,
};

pub const INDEX_NAME: &str = "gsi1";
const PK: &str = "pk";
const SK: &str = "sk";
const IPK: &str = "gsi1pk";
const ISK: &str = "gsi1sk";
const DATA: &str = "d";
const VERSION: &str = "v";
const TTL: &str = "ttl";

/// How to reach DynamoDB. Unset fields come from the standard AWS environment
/// (`AWS_REGION`, `AWS_ENDPOINT_URL_DYNAMODB`, credentials chain).
#[derive(Debug, Clone, Default)]
pub struct DynamoSettings {
    pub table_prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Fixed credentials, for local DynamoDB-compatible servers.
    pub static_credentials: Option<(String, String)>,
}

pub async fn client(settings: &DynamoSettings) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "ordermesh-static",
        ));
    }
    let sdk = loader.load().await;
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .build();
    Client::from_conf(conf)
}

/// How long `tables create` waits for a new table to become ACTIVE.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// Creates the table with its index, waits until it is ACTIVE, and makes sure TTL is on. An
/// existing table keeps its keys; a run that stopped between creating it and turning TTL on
/// (or a table made elsewhere without TTL) gets TTL on the next run. Returns whether the table
/// was created by this call.
pub async fn create_table(client: &Client, table: &str) -> Result<bool, StoreError> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(backend)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(backend)
    };
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(INDEX_NAME)
        .key_schema(key(IPK, KeyType::Hash)?)
        .key_schema(key(ISK, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(backend)?;
    let created = match client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK)?)
        .attribute_definitions(attr(SK)?)
        .attribute_definitions(attr(IPK)?)
        .attribute_definitions(attr(ISK)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(gsi)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            false
        }
        Err(e) => return Err(sdk_error(e)),
    };
    wait_until_active(client, table).await?;
    ensure_ttl(client, table).await?;
    Ok(created)
}

/// DynamoDB refuses most table changes (TTL among them) while a table is CREATING.
async fn wait_until_active(client: &Client, table: &str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(sdk_error)?;
        let status = described.table().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        if started.elapsed() > ACTIVE_TIMEOUT {
            return Err(StoreError::Backend(format!(
                "table {table} is still {status:?} after {} s",
                ACTIVE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Turns TTL on for the expiry attribute unless it already is (or is being turned on).
async fn ensure_ttl(client: &Client, table: &str) -> Result<(), StoreError> {
    let ttl = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(sdk_error)?;
    let on = ttl.time_to_live_description().is_some_and(|d| {
        d.attribute_name() == Some(TTL)
            && matches!(
                d.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            )
    });
    if on {
        return Ok(());
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .map_err(backend)?,
        )
        .send()
        .await
        .map_err(sdk_error)?;
    Ok(())
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn sdk_error<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            StoreError::Unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string())
        }
        SdkError::ResponseError(_) => StoreError::Unavailable("malformed response".into()),
        _ => {
            let text = aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string();
            if text.contains("ProvisionedThroughputExceeded")
                || text.contains("Throttling")
                || text.contains("RequestLimitExceeded")
                || text.contains("InternalServerError")
                || text.contains("ServiceUnavailable")
            {
                StoreError::Unavailable(text)
            } else {
                StoreError::Backend(text)
            }
        }
    }
}

/// A condition as a DynamoDB expression with the names and values it uses.
struct Expr {
    text: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

fn condition_expr(condition: Condition, now: i64) -> Option<Expr> {
    let mut names = HashMap::from([("#pk".to_string(), PK.to_string())]);
    let mut values = HashMap::new();
    let text = match condition {
        Condition::None => return None,
        Condition::NotExists => {
            names.insert("#ttl".into(), TTL.into());
            values.insert(":now".into(), AttributeValue::N(now.to_string()));
            "attribute_not_exists(#pk) OR #ttl <= :now".to_string()
        }
        Condition::Exists => {
            names.insert("#ttl".into(), TTL.into());
            values.insert(":now".into(), AttributeValue::N(now.to_string()));
            "attribute_exists(#pk) AND (attribute_not_exists(#ttl) OR #ttl > :now)".to_string()
        }
        Condition::Version(v) => {
            names.remove("#pk");
            names.insert("#v".into(), VERSION.into());
            names.insert("#ttl".into(), TTL.into());
            values.insert(":now".into(), AttributeValue::N(now.to_string()));
            values.insert(":ver".into(), AttributeValue::N(v.to_string()));
            "#v = :ver AND (attribute_not_exists(#ttl) OR #ttl > :now)".to_string()
        }
    };
    Some(Expr {
        text,
        names,
        values,
    })
}

fn key_map(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_string(), AttributeValue::S(pk.to_string())),
        (SK.to_string(), AttributeValue::S(sk.to_string())),
    ])
}

fn s(item: &HashMap<String, AttributeValue>, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Corrupt(format!("attribute {name} missing"))),
    }
}

fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<i64>, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("attribute {name} is not a number"))),
        None => Ok(None),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {name} has the wrong type"
        ))),
    }
}

fn to_item(map: &HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
    let data = match map.get(DATA) {
        Some(AttributeValue::B(b)) => Bytes::from(b.clone().into_inner()),
        None => Bytes::new(),
        _ => return Err(StoreError::Corrupt("payload has the wrong type".into())),
    };
    let index = match (map.get(IPK), map.get(ISK)) {
        (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => Some(IndexKey {
            pk: pk.clone(),
            sk: sk.clone(),
        }),
        _ => None,
    };
    Ok(Item {
        pk: s(map, PK)?,
        sk: s(map, SK)?,
        version: n(map, VERSION)?.unwrap_or_default() as u64,
        data,
        index,
        expires_at: n(map, TTL)?,
    })
}

/// A service's table in DynamoDB.
#[derive(Clone)]
pub struct DynamoTable {
    client: Client,
    table: String,
}

impl DynamoTable {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    pub(super) async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_map(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        let now = now_unix();
        match out.item() {
            Some(map) => {
                let item = to_item(map)?;
                Ok(is_live(item.expires_at, now).then_some(item))
            }
            None => Ok(None),
        }
    }

    /// The full attribute map of a put, with the version it will have (`None` when only the
    /// server knows it: a `None`/`Exists` put, written with `if_not_exists` arithmetic).
    fn put_attributes(
        item: &super::NewItem,
        version: Option<u64>,
    ) -> HashMap<String, AttributeValue> {
        let mut map = key_map(&item.pk, &item.sk);
        map.insert(DATA.into(), AttributeValue::B(item.data.to_vec().into()));
        if let Some(v) = version {
            map.insert(VERSION.into(), AttributeValue::N(v.to_string()));
        }
        if let Some(ix) = &item.index {
            map.insert(IPK.into(), AttributeValue::S(ix.pk.clone()));
            map.insert(ISK.into(), AttributeValue::S(ix.sk.clone()));
        }
        if let Some(t) = item.expires_at {
            map.insert(TTL.into(), AttributeValue::N(t.to_string()));
        }
        map
    }

    fn known_version(condition: Condition) -> Option<u64> {
        match condition {
            Condition::NotExists => Some(1),
            Condition::Version(v) => Some(v + 1),
            Condition::None | Condition::Exists => None,
        }
    }

    pub(super) async fn write(&self, writes: Vec<Write>) -> Result<Vec<u64>, StoreError> {
        let now = now_unix();
        let simple = writes.len() == 1 && !matches!(writes[0], Write::Check { .. });
        if simple {
            return self.write_one(&writes[0], now).await.map(|v| vec![v]);
        }
        let mut items = Vec::new();
        let mut sent_index = Vec::new();
        let mut versions = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let expr = condition_expr(w.condition(), now);
            let built = match w {
                Write::Put { item, condition } => {
                    let version = Self::known_version(*condition);
                    versions.push(version.unwrap_or_default());
                    if version.is_none() {
                        let u = IncrementingUpdate::new(item, expr);
                        let mut update = Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(key_map(&item.pk, &item.sk)))
                            .update_expression(u.update)
                            .set_expression_attribute_names(Some(u.names))
                            .set_expression_attribute_values(Some(u.values));
                        if let Some(c) = u.condition {
                            update = update.condition_expression(c);
                        }
                        TransactWriteItem::builder()
                            .update(update.build().map_err(backend)?)
                            .build()
                    } else {
                        let mut put = Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(Self::put_attributes(item, version)));
                        if let Some(e) = expr {
                            put = put
                                .condition_expression(e.text)
                                .set_expression_attribute_names(Some(e.names))
                                .set_expression_attribute_values(non_empty(e.values));
                        }
                        TransactWriteItem::builder()
                            .put(put.build().map_err(backend)?)
                            .build()
                    }
                }
                Write::Delete { pk, sk, .. } => {
                    versions.push(0);
                    let mut del = Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_map(pk, sk)));
                    if let Some(e) = expr {
                        del = del
                            .condition_expression(e.text)
                            .set_expression_attribute_names(Some(e.names))
                            .set_expression_attribute_values(non_empty(e.values));
                    }
                    TransactWriteItem::builder()
                        .delete(del.build().map_err(backend)?)
                        .build()
                }
                Write::Check { pk, sk, .. } => {
                    versions.push(0);
                    let Some(e) = expr else { continue };
                    let check = ConditionCheck::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_map(pk, sk)))
                        .condition_expression(e.text)
                        .set_expression_attribute_names(Some(e.names))
                        .set_expression_attribute_values(non_empty(e.values))
                        .build()
                        .map_err(backend)?;
                    TransactWriteItem::builder().condition_check(check).build()
                }
            };
            items.push(built);
            sent_index.push(i);
        }
        if items.is_empty() {
            return Ok(versions);
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(versions),
            Err(e) => {
                if let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc)) = e.as_service_error() {
                    let reasons = tc.cancellation_reasons();
                    if let Some(pos) = reasons
                        .iter()
                        .position(|r| r.code() == Some("ConditionalCheckFailed"))
                    {
                        let index = sent_index.get(pos).copied().unwrap_or(pos);
                        let (pk, sk) = writes[index].keys();
                        return Err(StoreError::ConditionFailed {
                            index,
                            pk: pk.to_string(),
                            sk: sk.to_string(),
                        });
                    }
                    if reasons.iter().any(|r| r.code() == Some("TransactionConflict")) {
                        return Err(StoreError::Conflict);
                    }
                }
                if e.as_service_error()
                    .is_some_and(|s| s.is_transaction_in_progress_exception())
                {
                    return Err(StoreError::Conflict);
                }
                Err(sdk_error(e))
            }
        }
    }

    async fn write_one(&self, w: &Write, now: i64) -> Result<u64, StoreError> {
        let expr = condition_expr(w.condition(), now);
        let (pk, sk) = w.keys();
        let failed = || StoreError::ConditionFailed {
            index: 0,
            pk: pk.to_string(),
            sk: sk.to_string(),
        };
        match w {
            Write::Put { item, condition } => {
                if let Some(version) = Self::known_version(*condition) {
                    let mut req = self
                        .client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(Self::put_attributes(item, Some(version))));
                    if let Some(e) = expr {
                        req = req
                            .condition_expression(e.text)
                            .set_expression_attribute_names(Some(e.names))
                            .set_expression_attribute_values(non_empty(e.values));
                    }
                    return match req.send().await {
                        Ok(_) => Ok(version),
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                        {
                            Err(failed())
                        }
                        Err(e) => Err(sdk_error(e)),
                    };
                }
                // None/Exists: the server increments the version it has.
                let u = IncrementingUpdate::new(item, expr);
                let mut req = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key_map(pk, sk)))
                    .update_expression(u.update)
                    .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew);
                if let Some(c) = u.condition {
                    req = req.condition_expression(c);
                }
                let names = u.names;
                let values = u.values;
                let out = req
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .send()
                    .await;
                match out {
                    Ok(out) => Ok(out
                        .attributes()
                        .and_then(|a| n(a, VERSION).ok().flatten())
                        .unwrap_or_default() as u64),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                    {
                        Err(failed())
                    }
                    Err(e) => Err(sdk_error(e)),
                }
            }
            Write::Delete { .. } => {
                let mut req = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key_map(pk, sk)));
                if let Some(e) = expr {
                    req = req
                        .condition_expression(e.text)
                        .set_expression_attribute_names(Some(e.names))
                        .set_expression_attribute_values(non_empty(e.values));
                }
                match req.send().await {
                    Ok(_) => Ok(0),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                    {
                        Err(failed())
                    }
                    Err(e) => Err(sdk_error(e)),
                }
            }
            Write::Check { .. } => Ok(0),
        }
    }

    pub(super) async fn query(&self, query: Query, on_index: bool) -> Result<Page, StoreError> {
        let (pk_attr, sk_attr) = if on_index { (IPK, ISK) } else { (PK, SK) };
        let mut names = HashMap::from([("#p".to_string(), pk_attr.to_string())]);
        let mut values = HashMap::from([(":p".to_string(), AttributeValue::S(query.pk.clone()))]);
        let mut key_expr = "#p = :p".to_string();
        match &query.range {
            KeyRange::All => {}
            KeyRange::Prefix(prefix) => {
                names.insert("#s".into(), sk_attr.into());
                values.insert(":a".into(), AttributeValue::S(prefix.clone()));
                key_expr.push_str(" AND begins_with(#s, :a)");
            }
            KeyRange::Between(a, b) => {
                names.insert("#s".into(), sk_attr.into());
                values.insert(":a".into(), AttributeValue::S(a.clone()));
                values.insert(":b".into(), AttributeValue::S(b.clone()));
                key_expr.push_str(" AND #s BETWEEN :a AND :b");
            }
        }
        let mut start = match &query.cursor {
            None => None,
            Some(c) => {
                let mut key = key_map(&c.pk, &c.sk);
                if on_index {
                    let (Some(ipk), Some(isk)) = (&c.ipk, &c.isk) else {
                        return Err(StoreError::InvalidCursor);
                    };
                    if ipk != &query.pk {
                        return Err(StoreError::InvalidCursor);
                    }
                    key.insert(IPK.into(), AttributeValue::S(ipk.clone()));
                    key.insert(ISK.into(), AttributeValue::S(isk.clone()));
                } else if c.pk != query.pk {
                    return Err(StoreError::InvalidCursor);
                }
                Some(key)
            }
        };
        let now = now_unix();
        let mut out: Vec<Item> = Vec::new();
        let mut more = false;
        // Ask for one more than the page so `next` is set only when something follows.
        loop {
            let want = (query.limit + 1 - out.len()) as i32;
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(&key_expr)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(query.order == Order::Ascending)
                .limit(want)
                .set_exclusive_start_key(start.take());
            if on_index {
                req = req.index_name(INDEX_NAME);
            } else {
                req = req.consistent_read(true);
            }
            let page = req.send().await.map_err(sdk_error)?;
            for map in page.items() {
                let item = to_item(map)?;
                if !is_live(item.expires_at, now) {
                    continue;
                }
                if out.len() == query.limit {
                    more = true;
                    break;
                }
                out.push(item);
            }
            match page.last_evaluated_key() {
                Some(lek) if !more => start = Some(lek.clone()),
                _ => break,
            }
        }
        let next = more.then(|| out.last()).flatten().map(|last| Cursor {
            pk: last.pk.clone(),
            sk: last.sk.clone(),
            ipk: on_index
                .then(|| last.index.as_ref().map(|i| i.pk.clone()))
                .flatten(),
            isk: on_index
                .then(|| last.index.as_ref().map(|i| i.sk.clone()))
                .flatten(),
        });
        Ok(Page { items: out, next })
    }
}

/// A put whose new version the server computes (`if_not_exists(v, 0) + 1`), for puts whose
/// condition does not pin the prior version.
struct IncrementingUpdate {
    update: String,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl IncrementingUpdate {
    fn new(item: &super::NewItem, condition: Option<Expr>) -> Self {
        let mut sets = vec!["#d = :d", "#v = if_not_exists(#v, :zero) + :one"];
        let mut removes = Vec::new();
        let (condition, mut names, mut values) = match condition {
            Some(e) => (Some(e.text), e.names, e.values),
            None => (None, HashMap::new(), HashMap::new()),
        };
        names.insert("#d".into(), DATA.into());
        names.insert("#v".into(), VERSION.into());
        names.insert("#ipk".into(), IPK.into());
        names.insert("#isk".into(), ISK.into());
        names.insert("#ttl".into(), TTL.into());
        values.insert(":d".into(), AttributeValue::B(item.data.to_vec().into()));
        values.insert(":zero".into(), AttributeValue::N("0".into()));
        values.insert(":one".into(), AttributeValue::N("1".into()));
        match &item.index {
            Some(ix) => {
                sets.extend(["#ipk = :ipk", "#isk = :isk"]);
                values.insert(":ipk".into(), AttributeValue::S(ix.pk.clone()));
                values.insert(":isk".into(), AttributeValue::S(ix.sk.clone()));
            }
            None => removes.extend(["#ipk", "#isk"]),
        }
        match item.expires_at {
            Some(t) => {
                sets.push("#ttl = :ttl");
                values.insert(":ttl".into(), AttributeValue::N(t.to_string()));
            }
            None => removes.push("#ttl"),
        }
        let mut update = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            update.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        Self {
            update,
            condition,
            names,
            values,
        }
    }
}

fn non_empty(values: HashMap<String, AttributeValue>) -> Option<HashMap<String, AttributeValue>> {
    (!values.is_empty()).then_some(values)
}
