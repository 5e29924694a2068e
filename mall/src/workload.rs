//! Synthetic stores events with a known outcome, for `carrier bench` and the crash tests.

use crate::prelude::*;
use crate::stores::*;
use carrier_messages::{Causality, EncodeError};
use carrier_messages::{Decoded, EncodedEvent};

/// Events whose end state is known in advance.
pub struct Workload {
    /// One store, `products` products, then price increases spread round-robin over them, each
    /// at its product's next version.
    pub events: Vec<EncodedEvent>,
    /// Each product's id, final price and final version.
    pub expected: Vec<(String, i64, u64)>,
}

impl Workload {
    /// `events` events in all over `products` products (`events` > `products` + 1).
    pub fn prices(events: u64, products: u64) -> Result<Workload, EncodeError> {
        let causality = Causality::default();
        let mut out = Vec::with_capacity(events as usize);
        let store = StoresEvent::StoreCreated(StoreCreated {
            id: "load-store".into(),
            name: "Load".into(),
            location: "Lab".into(),
        });
        out.push(Decoded::new(store, 1, &causality).encode()?);
        let mut expected = Vec::with_capacity(products as usize);
        for p in 0..products {
            let id = format!("load-p{p}");
            let added = StoresEvent::ProductAdded(ProductAdded {
                id: id.clone(),
                store_id: "load-store".into(),
                name: format!("Product {p}"),
                description: "synthetic product".into(),
                sku: format!("L{p}"),
                price: 1_000,
            });
            out.push(Decoded::new(added, 1, &causality).encode()?);
            expected.push((id, 1_000i64, 1u64));
        }
        let mut i = 0usize;
        while (out.len() as u64) < events && products > 0 {
            let p = i % products as usize;
            // Deltas differ from one change to the next, so a doubled or lost one shows.
            let delta = 1 + (i % 7) as i64;
            expected[p].1 += delta;
            expected[p].2 += 1;
            let raise = StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: expected[p].0.clone(), delta });
            out.push(Decoded::new(raise, expected[p].2, &causality).encode()?);
            i += 1;
        }
        Ok(Workload { events: out, expected })
    }

    /// Every difference between `db` and the expected end state; empty when they agree.
    pub fn check(&self, db: &crate::baskets::BasketsDb) -> Result<Vec<String>, carrier_storage::StorageError> {
        // A map, not a search per product: the check is linear, so a million products can be
        // verified as fast as they are cached.
        let cached: std::collections::HashMap<String, (i64, u64)> =
            db.products()?.into_iter().map(|(id, row, version)| (id, (row.price, version))).collect();
        let mut problems = Vec::new();
        for (id, price, version) in &self.expected {
            match cached.get(id.as_str()) {
                None => problems.push(format!("{id}: missing")),
                Some((p, v)) if p != price || v != version => {
                    problems.push(format!("{id}: price {p} v{v}, expected {price} v{version}"))
                }
                Some(_) => {}
            }
            if problems.len() >= 20 {
                problems.push("...".into());
                break;
            }
        }
        if cached.len() != self.expected.len() {
            problems.push(format!("{} products cached, {} expected", cached.len(), self.expected.len()));
        }
        Ok(problems)
    }
}
