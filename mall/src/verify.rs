//! Checks that a context's caches agree with the owner's state: the demo's verdict and the
//! tests' oracle.

use crate::prelude::*;
use carrier_storage::StorageError;

use crate::baskets::BasketsDb;
use crate::stores::StoresDb;

/// Every difference between the stores owner's state and the baskets caches, as sentences;
/// empty when they agree. Removed products must be absent from the cache; versions must match.
pub fn baskets_against_stores(owner: &StoresDb, cache: &BasketsDb) -> Result<Vec<String>, StorageError> {
    let mut problems = Vec::new();
    let stores = owner.stores()?;
    let cached_stores = cache.stores()?;
    for (id, row) in &stores {
        match cached_stores.iter().find(|(cid, _, _)| cid == id) {
            None => problems.push(format!("store {id}: missing from baskets cache")),
            Some((_, cached, version)) => {
                if cached.name != row.name {
                    problems.push(format!("store {id}: name {:?} in cache, {:?} at owner", cached.name, row.name));
                }
                if *version != row.version {
                    problems.push(format!("store {id}: version {version} in cache, {} at owner", row.version));
                }
            }
        }
    }
    for (id, _, _) in &cached_stores {
        if !stores.iter().any(|(sid, _)| sid == id) {
            problems.push(format!("store {id}: in baskets cache but unknown to the owner"));
        }
    }
    let products = owner.products()?;
    let cached_products = cache.products()?;
    for (id, row) in &products {
        let cached = cached_products.iter().find(|(cid, _, _)| cid == id);
        match (row.removed, cached) {
            (true, Some(_)) => problems.push(format!("product {id}: removed at owner, still cached")),
            (true, None) => {}
            (false, None) => problems.push(format!("product {id}: missing from baskets cache")),
            (false, Some((_, cached, version))) => {
                if cached.name != row.name || cached.price != row.price || cached.store_id != row.store_id {
                    problems.push(format!(
                        "product {id}: cache has ({}, {}, {}), owner has ({}, {}, {})",
                        cached.store_id, cached.name, cached.price, row.store_id, row.name, row.price
                    ));
                }
                if *version != row.version {
                    problems.push(format!("product {id}: version {version} in cache, {} at owner", row.version));
                }
            }
        }
    }
    for (id, _, _) in &cached_products {
        if !products.iter().any(|(pid, _)| pid == id) {
            problems.push(format!("product {id}: in baskets cache but unknown to the owner"));
        }
    }
    Ok(problems)
}

/// Every difference between the stores owner's state and the depot caches; empty when they
/// agree. The depot keeps names and locations of stores and names of products.
pub fn depot_against_stores(owner: &StoresDb, cache: &crate::depot::DepotDb) -> Result<Vec<String>, StorageError> {
    let mut problems = Vec::new();
    let stores = owner.stores()?;
    let cached_stores = cache.stores()?;
    for (id, row) in &stores {
        match cached_stores.iter().find(|(cid, _, _)| cid == id) {
            None => problems.push(format!("store {id}: missing from depot cache")),
            Some((_, cached, version)) => {
                if cached.name != row.name || cached.location != row.location {
                    problems.push(format!(
                        "store {id}: depot has ({}, {}), owner has ({}, {})",
                        cached.name, cached.location, row.name, row.location
                    ));
                }
                if *version != row.version {
                    problems.push(format!("store {id}: version {version} in depot, {} at owner", row.version));
                }
            }
        }
    }
    if cached_stores.len() != stores.len() {
        problems.push(format!("depot caches {} stores, the owner has {}", cached_stores.len(), stores.len()));
    }
    let products = owner.products()?;
    let cached_products = cache.products()?;
    for (id, row) in &products {
        let cached = cached_products.iter().find(|(cid, _, _)| cid == id);
        match (row.removed, cached) {
            (true, Some(_)) => problems.push(format!("product {id}: removed at owner, still in depot")),
            (false, None) => problems.push(format!("product {id}: missing from depot cache")),
            (false, Some((_, cached, version))) => {
                if cached.name != row.name || cached.store_id != row.store_id {
                    problems.push(format!(
                        "product {id}: depot has ({}, {}), owner has ({}, {})",
                        cached.store_id, cached.name, row.store_id, row.name
                    ));
                }
                if *version != row.version {
                    problems.push(format!("product {id}: version {version} in depot, {} at owner", row.version));
                }
            }
            (true, None) => {}
        }
    }
    Ok(problems)
}
