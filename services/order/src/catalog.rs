//! The catalog: products with a price and stock, all in one partition (`catalog`, sorted by
//! SKU). Stock moves only by versioned writes inside order batches, so it never oversells.

use std::sync::Arc;

use ordermesh_contracts::order::Product;
use ordermesh_platform::money::{self, money};
use ordermesh_platform::status::Violations;
use ordermesh_platform::store::{
    Attempts, Condition, Cursor, KeyLocks, KeyRange, NewItem, Query, StoreError, Table, Turns,
    Write,
};
use prost::Message;

pub const CATALOG: &str = "catalog";
pub const MAX_STOCK: i64 = 1_000_000_000;

pub fn product_sk(sku: &str) -> String {
    format!("sku#{sku}")
}

/// SKUs are 1..=32 of A–Z, 0–9 and '-'.
pub fn valid_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= 32
        && sku
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
}

pub fn check_product(v: &mut Violations, p: &Product, check_sku: bool) {
    if check_sku {
        v.check(
            valid_sku(&p.sku),
            "product.sku",
            "must be 1-32 characters of A-Z, 0-9 and '-'",
        );
    }
    let name = p.display_name.trim();
    v.check(
        !name.is_empty() && name.chars().count() <= 120,
        "product.display_name",
        "must be 1-120 characters",
    );
    money::check_positive(v, "product.unit_price", p.unit_price.as_ref());
    v.check(
        (0..=MAX_STOCK).contains(&p.stock),
        "product.stock",
        format!("must be 0..={MAX_STOCK}"),
    );
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("product {0} exists")]
    Exists(String),
    #[error("product {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored product is unreadable: {0}")]
    Corrupt(String),
}

impl From<CatalogError> for tonic::Status {
    fn from(e: CatalogError) -> Self {
        match &e {
            CatalogError::Exists(_) => tonic::Status::already_exists(e.to_string()),
            CatalogError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            CatalogError::Store(_) => match e {
                CatalogError::Store(s) => s.into(),
                _ => tonic::Status::internal("storage error"),
            },
            CatalogError::Corrupt(d) => {
                tracing::error!(detail = %d, "corrupt product");
                tonic::Status::data_loss("stored product is unreadable")
            }
        }
    }
}

pub fn decode_product(bytes: &[u8]) -> Result<Product, CatalogError> {
    Product::decode(bytes).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

#[derive(Clone)]
pub struct Catalog {
    table: Table,
    stock_turns: Arc<KeyLocks>,
}

use ordermesh_platform::clock::timestamp as now;

impl Catalog {
    pub fn new(table: Table) -> Self {
        Self {
            table,
            stock_turns: Arc::new(KeyLocks::default()),
        }
    }

    /// Waits for this process's turn to change these products, so concurrent placements of
    /// a popular product take turns here instead of losing races at the store.
    pub async fn turn<'k>(&self, skus: impl IntoIterator<Item = &'k str>) -> Turns<'_> {
        self.stock_turns.lock(skus).await
    }

    pub async fn get(&self, sku: &str) -> Result<Option<(Product, u64)>, CatalogError> {
        match self.table.get(CATALOG, &product_sk(sku)).await? {
            Some(item) => Ok(Some((decode_product(&item.data)?, item.version))),
            None => Ok(None),
        }
    }

    pub async fn create(&self, mut p: Product) -> Result<Product, CatalogError> {
        p.name = format!("products/{}", p.sku);
        p.display_name = p.display_name.trim().to_string();
        p.create_time = Some(now());
        p.update_time = p.create_time;
        match self
            .table
            .put(
                NewItem::new(CATALOG, product_sk(&p.sku), p.encode_to_vec()),
                Condition::NotExists,
            )
            .await
        {
            Ok(_) => Ok(p),
            Err(e) if e.is_condition_failed() => Err(CatalogError::Exists(p.sku)),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies `change` to the product if nobody changed it in between (retrying a few times).
    pub async fn update(
        &self,
        sku: &str,
        change: impl Fn(&mut Product),
    ) -> Result<Product, CatalogError> {
        let mut attempts = Attempts::new(8);
        while attempts.next().await {
            let _turn = self.turn([sku]).await;
            let (mut p, version) = self
                .get(sku)
                .await?
                .ok_or_else(|| CatalogError::NotFound(sku.into()))?;
            change(&mut p);
            p.update_time = Some(now());
            match self
                .table
                .put(
                    NewItem::new(CATALOG, product_sk(sku), p.encode_to_vec()),
                    Condition::Version(version),
                )
                .await
            {
                Ok(_) => return Ok(p),
                Err(e) => attempts.lost(e)?,
            }
        }
        Err(attempts.exhausted(CatalogError::Store(StoreError::Conflict)))
    }

    pub async fn list(
        &self,
        page_size: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Product>, Option<Cursor>), CatalogError> {
        let page = self
            .table
            .query(
                Query::partition(CATALOG)
                    .range(KeyRange::Prefix("sku#".into()))
                    .limit(page_size)
                    .after(cursor),
            )
            .await?;
        let products = page
            .items
            .iter()
            .map(|i| decode_product(&i.data))
            .collect::<Result<_, _>>()?;
        Ok((products, page.next))
    }

    /// The write that sets a product's stock, conditional on the version read.
    pub fn stock_write(p: &Product, version: u64, stock: i64) -> Write {
        let mut p = p.clone();
        p.stock = stock;
        p.update_time = Some(now());
        Write::put(
            NewItem::new(CATALOG, product_sk(&p.sku), p.encode_to_vec()),
            Condition::Version(version),
        )
    }

    /// Adds a few products when the catalog is empty (local runs).
    pub async fn seed_demo(&self) -> Result<usize, CatalogError> {
        if !self.list(1, None).await?.0.is_empty() {
            return Ok(0);
        }
        let demo = [
            ("MUG-001", "Ordermesh mug", 1250, 100),
            ("TEE-002", "Ordermesh t-shirt", 2400, 50),
            ("STICKER-003", "Sticker pack", 300, 1000),
            ("BOOK-004", "Designing meshes (book)", 3900, 20),
        ];
        let mut n = 0;
        for (sku, name, price, stock) in demo {
            let p = Product {
                sku: sku.into(),
                display_name: name.into(),
                unit_price: Some(money("EUR", price)),
                stock,
                ..Default::default()
            };
            match self.create(p).await {
                Ok(_) => n += 1,
                Err(CatalogError::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}
