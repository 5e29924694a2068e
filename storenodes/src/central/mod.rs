//! The central inventory: the owner of products and their stock (seed 003's "Central Inventory
//! API"), a Carrier context like any user's own.
//!
//! It decides [`CentralCommand`]s (each in one redb transaction with the outbox row of its
//! event, and with its idempotency key when the request carried one), publishes
//! [`CentralEvent`]s on the stream `CENTRAL`, and answers [`CentralQuery`]s (a product, an
//! offset page), the entity endpoint every cache of its products repairs version gaps through,
//! and the snapshot endpoint a store node's full sync walks (`query.central.snapshot`). [`http`] is its HTTP API.
//!
//! Rules a real inventory has: stock never goes below zero (`insufficient_stock`), an update
//! may name the version it expects (`version_conflict` with the current version and stock when
//! it is not), a delta of zero is refused, and a deleted product's id may be created again,
//! its versions going on from where they stopped (so every cache applies the new product as
//! the next version, never as a stale one).

pub mod http;

use carrier_actors::BoundedContext;
use carrier_messages::{check, domain_events, Causality, Found, QueryReply, Validate, ValidationError};
use carrier_messages::{CommandFailure, Entity, SnapshotEntity};
use carrier_storage::{CommandError, ContextFile, ContextKind, Decides, Emitter, Rows, StorageError, WriteTransaction};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The context's name: `cmd.central`, `query.central`, `central.redb`.
pub const CONTEXT: &str = "central";

/// Most products in one page of a list or a snapshot.
pub const MAX_PAGE: usize = 1000;

/// A product was created (or created again after a deletion), with its whole state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCreated {
    /// The product id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: i64,
    /// Units in stock.
    pub available: i64,
    /// When, RFC 3339.
    pub last_updated: String,
}

/// A product's name or price changed. Like every event of the central but a deletion, it
/// carries the product's whole state after the change (event-carried state transfer: a reader
/// never needs an earlier event to know what the product is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductModified {
    /// The product id.
    pub id: String,
    /// Its name now.
    pub name: String,
    /// Its price now, in cents.
    pub price: i64,
    /// Units in stock.
    pub available: i64,
    /// When, RFC 3339.
    pub last_updated: String,
}

/// Stock moved by `delta`, to `available`; with the product's whole state after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InventoryUpdated {
    /// The product id.
    pub id: String,
    /// The change (negative: sold or reserved).
    pub delta: i64,
    /// Units in stock after it.
    pub available: i64,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: i64,
    /// When, RFC 3339.
    pub last_updated: String,
}

/// A product was deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDeleted {
    /// The product id.
    pub id: String,
    /// When, RFC 3339.
    pub last_updated: String,
}

fn check_time(value: &str) -> Result<(), ValidationError> {
    check::text("last_updated", value, 1, 64)
}

impl Validate for ProductCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::name("name", &self.name)?;
        check::non_negative("price", self.price)?;
        check::non_negative("available", self.available)?;
        check_time(&self.last_updated)
    }
}

impl Validate for ProductModified {
    fn validate(&self) -> Result<(), ValidationError> {
        check::name("name", &self.name)?;
        check::non_negative("price", self.price)?;
        check::non_negative("available", self.available)?;
        check_time(&self.last_updated)
    }
}

impl Validate for InventoryUpdated {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.delta == 0 {
            return Err(ValidationError { field: "delta", problem: "must not be 0".into() });
        }
        check::non_negative("available", self.available)?;
        check::name("name", &self.name)?;
        check::non_negative("price", self.price)?;
        check_time(&self.last_updated)
    }
}

impl Validate for ProductDeleted {
    fn validate(&self) -> Result<(), ValidationError> {
        check_time(&self.last_updated)
    }
}

domain_events! {
    /// What the central inventory publishes, on the stream `CENTRAL`.
    enum CentralEvent, context "central", stream "CENTRAL", subjects "central.>";
    ProductCreated => "product", "central.product.created";
    ProductModified => "product", "central.product.modified";
    InventoryUpdated => "product", "central.product.inventory_updated";
    ProductDeleted => "product", "central.product.deleted";
}

/// The central inventory's commands, on `cmd.central` (JSON or CBOR, tagged by `command`).
/// `version`, where a command takes it, is the version the caller expects the product to be at
/// (optimistic concurrency); without it the command applies to whatever version is current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum CentralCommand {
    /// A new product (or one created again after its deletion).
    CreateProduct {
        /// Its id, chosen by the caller.
        product_id: String,
        /// Its name.
        name: String,
        /// Its price in cents.
        price: i64,
        /// Units in stock.
        available: i64,
    },
    /// Changes a product's name, price or both.
    ModifyProduct {
        /// The product.
        product_id: String,
        /// The new name, if it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The new price in cents, if it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        price: Option<i64>,
        /// The version the caller expects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Moves stock by `delta` (never below zero).
    UpdateInventory {
        /// The product.
        product_id: String,
        /// The change; not 0.
        delta: i64,
        /// The version the caller expects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Deletes a product.
    DeleteProduct {
        /// The product.
        product_id: String,
        /// The version the caller expects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
}

impl CentralCommand {
    /// The product it is about.
    pub fn product_id(&self) -> &str {
        match self {
            CentralCommand::CreateProduct { product_id, .. }
            | CentralCommand::ModifyProduct { product_id, .. }
            | CentralCommand::UpdateInventory { product_id, .. }
            | CentralCommand::DeleteProduct { product_id, .. } => product_id,
        }
    }
}

/// A product as the central keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Product {
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: i64,
    /// Units in stock.
    pub available: i64,
    /// The version of its last event.
    pub version: u64,
    /// When it last changed, RFC 3339.
    pub last_updated: String,
}

/// Products by id.
pub const PRODUCTS: Rows<Product> = Rows::new("products");
/// Deleted products' ids → the version of their deletion (a re-creation goes on from it).
const DELETED: Rows<u64> = Rows::new("deleted");

/// The central inventory's file, `central.redb`.
pub struct Central;

impl ContextKind for Central {
    const NAME: &'static str = CONTEXT;
    type Event = CentralEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        PRODUCTS.create(txn)?;
        DELETED.create(txn)
    }
}

/// Now, RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Refuses a command whose expected version is not the product's.
fn expect_version(expected: Option<u64>, product: &Product) -> Result<(), CommandError> {
    match expected {
        Some(expected) if expected != product.version => Err(CommandError::Refused {
            code: "version_conflict",
            message: format!("version conflict: expected {}, got {expected}", product.version),
            details: serde_json::json!({ "current_version": product.version, "available": product.available }),
        }),
        _ => Ok(()),
    }
}

impl Decides<CentralCommand> for Central {
    fn command_name(command: &CentralCommand) -> &'static str {
        match command {
            CentralCommand::CreateProduct { .. } => "CreateProduct",
            CentralCommand::ModifyProduct { .. } => "ModifyProduct",
            CentralCommand::UpdateInventory { .. } => "UpdateInventory",
            CentralCommand::DeleteProduct { .. } => "DeleteProduct",
        }
    }

    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, CentralEvent>,
        command: &CentralCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let mut products = PRODUCTS.open(txn)?;
        let id = command.product_id().to_string();
        check::id("product_id", &id)?;
        let last_updated = now_rfc3339();
        let not_found = || CommandError::NotFound { kind: "product", id: id.clone() };
        let (event, product) = match command.clone() {
            CentralCommand::CreateProduct { name, price, available, .. } => {
                if products.get(&id)?.is_some() {
                    return Err(CommandError::AlreadyExists { kind: "product", id });
                }
                let mut deleted = DELETED.open(txn)?;
                let version = deleted.get(&id)?.unwrap_or(0) + 1;
                deleted.remove(&id)?;
                let product =
                    Product { name: name.clone(), price, available, version, last_updated: last_updated.clone() };
                (
                    CentralEvent::ProductCreated(ProductCreated {
                        id: id.clone(),
                        name,
                        price,
                        available,
                        last_updated,
                    }),
                    product,
                )
            }
            CentralCommand::ModifyProduct { name, price, version, .. } => {
                let mut product = products.get(&id)?.ok_or_else(not_found)?;
                expect_version(version, &product)?;
                if name.is_none() && price.is_none() {
                    return Err(CommandError::Invalid(ValidationError {
                        field: "name",
                        problem: "a modification names a new name, a new price or both".into(),
                    }));
                }
                product.name = name.unwrap_or(product.name);
                product.price = price.unwrap_or(product.price);
                product.version += 1;
                product.last_updated = last_updated.clone();
                let event = ProductModified {
                    id: id.clone(),
                    name: product.name.clone(),
                    price: product.price,
                    available: product.available,
                    last_updated,
                };
                (CentralEvent::ProductModified(event), product)
            }
            CentralCommand::UpdateInventory { delta, version, .. } => {
                let mut product = products.get(&id)?.ok_or_else(not_found)?;
                expect_version(version, &product)?;
                if delta == 0 {
                    return Err(CommandError::Invalid(ValidationError {
                        field: "delta",
                        problem: "must not be 0".into(),
                    }));
                }
                let available = product.available.checked_add(delta).ok_or_else(|| {
                    CommandError::Invalid(ValidationError {
                        field: "delta",
                        problem: format!("{delta} is out of range"),
                    })
                })?;
                let available = Some(available).filter(|q| *q >= 0).ok_or_else(|| CommandError::Refused {
                    code: "insufficient_stock",
                    message: format!(
                        "{id:?} has {} in stock; a delta of {delta} would go below zero",
                        product.available
                    ),
                    details: serde_json::json!({ "current_version": product.version, "available": product.available }),
                })?;
                product.available = available;
                product.version += 1;
                product.last_updated = last_updated.clone();
                let event = InventoryUpdated {
                    id: id.clone(),
                    delta,
                    available,
                    name: product.name.clone(),
                    price: product.price,
                    last_updated,
                };
                (CentralEvent::InventoryUpdated(event), product)
            }
            CentralCommand::DeleteProduct { version, .. } => {
                let mut product = products.get(&id)?.ok_or_else(not_found)?;
                expect_version(version, &product)?;
                product.version += 1;
                products.remove(&id)?;
                DELETED.open(txn)?.put(&id, &product.version)?;
                emit.decided(
                    CentralEvent::ProductDeleted(ProductDeleted { id, last_updated }),
                    product.version,
                    causality,
                )?;
                return Ok(());
            }
        };
        products.put(&id, &product)?;
        emit.decided(event, product.version, causality)
    }
}

/// A product as queries answer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductView {
    /// Its id.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: i64,
    /// Units in stock.
    pub available: i64,
    /// The version of its last event.
    pub version: u64,
    /// When it last changed, RFC 3339.
    pub last_updated: String,
}

impl ProductView {
    /// `product` under `id`.
    pub fn of(id: String, product: Product) -> Self {
        ProductView {
            product_id: id,
            name: product.name,
            price: product.price,
            available: product.available,
            version: product.version,
            last_updated: product.last_updated,
        }
    }
}

/// The central inventory's queries, on `query.central`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case", deny_unknown_fields)]
pub enum CentralQuery {
    /// One product; answered with a `Found<ProductView>`.
    GetProduct {
        /// Its id.
        product_id: String,
    },
    /// Products in id order, skipping `offset`; answered with a [`ProductPage`] with the total.
    ListProducts {
        /// How many to skip.
        #[serde(default)]
        offset: usize,
        /// How many at most (up to [`MAX_PAGE`]).
        limit: usize,
    },
}

/// A page of products.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ProductPage {
    /// Whether the query was answered.
    pub ok: bool,
    /// The products, in id order.
    #[serde(default)]
    pub products: Vec<ProductView>,
    /// How many products there are in all.
    #[serde(default)]
    pub total: u64,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandFailure>,
}

impl QueryReply for ProductPage {
    fn failed(code: &str, message: String) -> Self {
        ProductPage {
            error: Some(CommandFailure { code: code.to_string(), message, details: None }),
            ..ProductPage::default()
        }
    }
}

/// What `query.central` answers: one product, or a page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CentralReply {
    /// A page of products.
    Page(ProductPage),
    /// One product, or nothing.
    Product(Found<ProductView>),
}

impl QueryReply for CentralReply {
    fn failed(code: &str, message: String) -> Self {
        CentralReply::Page(ProductPage::failed(code, message))
    }
}

/// Answers a query from the file (a read transaction: never waits for the writer).
pub fn answer(db: &ContextFile<Central>, query: CentralQuery) -> CentralReply {
    let failed = |e: StorageError| CentralReply::Page(ProductPage::failed("unavailable", e.to_string()));
    match query {
        CentralQuery::GetProduct { product_id } => CentralReply::Product(Found::answer(
            db.read(|txn| Ok(PRODUCTS.get(txn, &product_id)?.map(|p| ProductView::of(product_id.clone(), p)))),
        )),
        CentralQuery::ListProducts { offset, limit } => {
            match db.read(|txn| Ok((PRODUCTS.slice(txn, offset, limit.min(MAX_PAGE))?, PRODUCTS.len(txn)?))) {
                Ok((rows, total)) => CentralReply::Page(page(rows, total)),
                Err(e) => failed(e),
            }
        }
    }
}

fn page(rows: Vec<(String, Product)>, total: u64) -> ProductPage {
    let products = rows.into_iter().map(|(id, p)| ProductView::of(id, p)).collect();
    ProductPage { ok: true, products, total, error: None }
}

/// The central inventory's declaration: commands on `cmd.central`, queries on `query.central`,
/// the entity endpoint `query.central.entity` that caches of its products fall back on, and the
/// snapshot endpoint `query.central.snapshot` that their full syncs walk.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Central>()
        .decides::<CentralCommand>()
        .queries(answer)
        .entities(|db, aggregate, id| {
            if aggregate != "product" {
                return Ok(None);
            }
            // A deleted product answers as a tombstone: a cache forgets it.
            db.read(|txn| match PRODUCTS.get(txn, id)? {
                Some(p) => Ok(Some(Entity::of(p.version, &ProductView::of(id.to_string(), p)))),
                None => Ok(DELETED.get(txn, id)?.map(Entity::deleted)),
            })
        })
        .snapshots(|db, aggregate, after, limit| {
            if aggregate != "product" {
                return Ok((Vec::new(), 0));
            }
            // Products and the tombstones of deleted ones, merged in id order (an id is in one
            // table or the other): a cache that full-syncs keeps a deleted product's version,
            // so its older events are stale, never a product come back.
            db.read(|txn| {
                let live = PRODUCTS.page(txn, after, limit)?.into_iter().map(|(id, p)| SnapshotEntity {
                    version: p.version,
                    state: serde_json::to_value(ProductView::of(id.clone(), p)).ok(),
                    id,
                });
                let gone = DELETED.page(txn, after, limit)?.into_iter().map(|(id, version)| SnapshotEntity {
                    id,
                    version,
                    state: None,
                });
                let mut entities: Vec<SnapshotEntity<serde_json::Value>> = live.chain(gone).collect();
                entities.sort_by(|a, b| a.id.cmp(&b.id));
                entities.truncate(limit);
                Ok((entities, PRODUCTS.len(txn)? + DELETED.len(txn)?))
            })
        })
        .build()
}
