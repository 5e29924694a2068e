//! The engine's rules on a neutral kind of the test's own, through the public API a user's
//! context uses: a redelivered event applies once, an older version is stale, an event after a
//! gap waits for the missing one, a reaction that rejects an event keeps nothing of the batch,
//! an owner's answer closes a gap and never goes over a newer version, and what a reaction emits
//! is in the outbox exactly once.

use carrier_messages::Causality;
use carrier_messages::{domain_events, Decoded, Envelope, Validate};
use carrier_storage::ReactError;
use carrier_storage::{
    Adopted, Adopts, ContextDb, ContextKind, Disposition, Emitter, FileWriter, Inbound, Reacts, Rows, RowsMut,
    StorageError, WriteTransaction,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct Listed {
    id: String,
    price: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct Repriced {
    id: String,
    delta: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct Expensive {
    id: String,
}

impl Validate for Listed {}
impl Validate for Repriced {}
impl Validate for Expensive {}

domain_events! {
    /// The owner's events.
    enum CatalogEvent, context "catalog", stream "CATALOG", subjects "catalog.>";
    Listed => "item", "catalog.item.listed";
    Repriced => "item", "catalog.item.repriced";
}

domain_events! {
    /// What the shelf publishes.
    enum ShelfEvent, context "shelf", stream "SHELF", subjects "shelf.>";
    Expensive => "item", "shelf.item.expensive";
}

/// A cache of the catalogue's prices that says when an item passes 1000, and refuses a
/// negative price.
struct Shelf;

const PRICES: Rows<i64> = Rows::new("prices");

impl ContextKind for Shelf {
    const NAME: &'static str = "shelf";
    type Event = ShelfEvent;
}

impl Reacts<CatalogEvent> for Shelf {
    type Tables<'txn> = RowsMut<'txn, i64>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, i64>, StorageError> {
        PRICES.open(txn)
    }

    fn react(
        prices: &mut RowsMut<'_, i64>,
        emit: &mut Emitter<'_, ShelfEvent>,
        envelope: &Envelope,
        event: &CatalogEvent,
    ) -> Result<(), ReactError> {
        let (id, price) = match event {
            CatalogEvent::Listed(e) => (&e.id, e.price),
            CatalogEvent::Repriced(e) => (&e.id, prices.get(&e.id)?.unwrap_or(0) + e.delta),
        };
        if price < 0 {
            return Err(ReactError::reject(format!("{id} would cost {price}")));
        }
        let before = prices.get(id)?.unwrap_or(0);
        prices.put(id, &price)?;
        if before <= 1000 && price > 1000 {
            emit.caused(ShelfEvent::Expensive(Expensive { id: id.clone() }), envelope)?;
        }
        Ok(())
    }
}

impl Adopts<CatalogEvent> for Shelf {
    type State = i64;
    const TABLES: &'static [(&'static str, &'static str)] = &[("item", "prices")];

    fn adopt(prices: &mut RowsMut<'_, i64>, _aggregate: &str, id: &str, price: i64) -> Result<(), StorageError> {
        prices.put(id, &price)
    }

    fn forget(prices: &mut RowsMut<'_, i64>, _aggregate: &str, id: &str) -> Result<(), StorageError> {
        prices.remove(id)
    }
}

fn file() -> (tempfile::TempDir, FileWriter<Shelf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = FileWriter::<Shelf>::open(dir.path().join("shelf.redb")).expect("open");
    (dir, file)
}

/// An event at `version` of its item, delivered at stream sequence `seq`.
fn at(event: CatalogEvent, version: u64, seq: u64) -> Inbound<CatalogEvent> {
    Inbound { stream_seq: seq, decoded: Decoded::new(event, version, &Causality::default()) }
}

fn listed(price: i64) -> CatalogEvent {
    CatalogEvent::Listed(Listed { id: "a".into(), price })
}

fn repriced(delta: i64) -> CatalogEvent {
    CatalogEvent::Repriced(Repriced { id: "a".into(), delta })
}

fn price(file: &FileWriter<Shelf>) -> Option<i64> {
    file.read(|txn| PRICES.get(txn, "a")).expect("read")
}

#[test]
fn a_redelivered_event_is_a_duplicate_and_applies_once() {
    let (_dir, file) = file();
    let (first, raise) = (at(listed(100), 1, 1), at(repriced(5), 2, 2));
    let outcome = file.apply("c", &[first.clone(), raise.clone()], 0).expect("apply");
    assert_eq!(outcome.dispositions, vec![Disposition::Applied, Disposition::Applied]);
    let again = file.apply("c", &[first, raise.clone(), raise], 0).expect("apply");
    assert_eq!(again.count("duplicate"), 3);
    assert_eq!(price(&file), Some(105), "the delta counted once");
    assert_eq!(file.checkpoint("c").expect("checkpoint"), 2);
}

#[test]
fn the_same_version_under_a_new_id_is_stale() {
    let (_dir, file) = file();
    file.apply("c", &[at(listed(100), 1, 1), at(repriced(50), 2, 2)], 0).expect("apply");
    // Re-published by its owner with a new event id: same version, so stale, not applied again.
    let outcome = file.apply("c", &[at(repriced(50), 2, 3)], 0).expect("apply");
    assert_eq!(outcome.dispositions, vec![Disposition::Stale { current: 2 }]);
    assert_eq!(price(&file), Some(150));
}

#[test]
fn an_event_after_a_gap_waits_for_the_missing_one() {
    let (_dir, file) = file();
    let outcome = file.apply("c", &[at(listed(100), 1, 1), at(repriced(7), 3, 2), at(repriced(100), 4, 3)], 0);
    let outcome = outcome.expect("apply");
    assert_eq!(outcome.count("parked"), 2);
    assert_eq!(price(&file), Some(100), "versions 3 and 4 wait for 2");
    assert_eq!(file.gaps().expect("gaps"), vec![("item".into(), "a".into(), 1, 3)]);
    let outcome = file.apply("c", &[at(repriced(1), 2, 4)], 0).expect("apply");
    assert_eq!(outcome.unparked, 2, "the missing version lets the parked ones through, in order");
    assert_eq!(price(&file), Some(208));
    assert!(file.gaps().expect("gaps").is_empty());
}

#[test]
fn a_rejected_event_keeps_nothing_of_its_batch() {
    let (_dir, file) = file();
    file.apply("c", &[at(listed(100), 1, 1)], 0).expect("apply");
    let error = file.apply("c", &[at(repriced(1), 2, 2), at(repriced(-500), 3, 3)], 0).expect_err("rejected");
    assert!(error.to_string().contains("would cost -399"), "{error}");
    assert_eq!(price(&file), Some(100), "the batch's first event was not kept either");
    assert_eq!(file.checkpoint("c").expect("checkpoint"), 1);
}

#[test]
fn what_a_reaction_emits_is_in_the_outbox_once_with_its_cause() {
    let (_dir, file) = file();
    let raise = at(repriced(2000), 2, 2);
    file.apply("c", &[at(listed(100), 1, 1), raise.clone()], 0).expect("apply");
    file.apply("c", &[raise.clone()], 0).expect("redelivered");
    let outbox = file.outbox_pending(10).expect("outbox");
    assert_eq!(outbox.len(), 1, "emitted once, whatever the redeliveries");
    let (_, encoded) = &outbox[0];
    let emitted = Decoded::<ShelfEvent>::decode(
        &encoded.subject,
        |h| encoded.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)).map(|(_, v)| v.as_str()),
        &encoded.body,
    )
    .expect("decodes");
    assert_eq!(emitted.envelope.causation_id.as_deref(), Some(raise.decoded.envelope.event_id.to_string().as_str()));
}

#[test]
fn an_owners_answer_closes_a_gap_and_never_goes_over_a_newer_version() {
    let (_dir, file) = file();
    // The cache never saw versions 1 to 3; 4 and 6 arrive.
    file.apply("c", &[at(repriced(10), 4, 1), at(repriced(1), 6, 2)], 0).expect("apply");
    assert_eq!(file.gaps().expect("gaps"), vec![("item".into(), "a".into(), 0, 4)]);
    // The owner says: at version 4 the price is 1040.
    let adopted = file.adopt::<CatalogEvent>("item", "a", 4, |t| Shelf::adopt(t, "item", "a", 1040));
    assert_eq!(adopted.expect("adopt"), Adopted::Written { unparked: 0 });
    assert_eq!(price(&file), Some(1040));
    file.apply("c", &[at(repriced(100), 5, 3)], 0).expect("version 5 arrives late");
    assert_eq!(price(&file), Some(1141), "6 follows 5 out of the parked table");
    let older = file.adopt::<CatalogEvent>("item", "a", 2, |t| Shelf::adopt(t, "item", "a", 1));
    assert_eq!(older.expect("adopt"), Adopted::AlreadyCurrent { current: 6 });
    assert_eq!(price(&file), Some(1141), "an older answer never overwrites newer data");
    // A tombstone from the owner forgets the item and moves its version on.
    let forgotten = file.adopt::<CatalogEvent>("item", "a", 7, |t| Shelf::forget(t, "item", "a"));
    assert_eq!(forgotten.expect("forget"), Adopted::Written { unparked: 0 });
    assert_eq!(price(&file), None);
    let late = file.apply("c", &[at(repriced(1), 7, 4)], 0).expect("apply");
    assert_eq!(late.dispositions, vec![Disposition::Stale { current: 7 }], "its older events are stale");
}

/// A command of the shelf's own: it publishes an `Expensive` flag for an item, numbered by the
/// library.
struct Flag(&'static str);

impl carrier_storage::Decides<Flag> for Shelf {
    fn decide(
        _txn: &WriteTransaction,
        emit: &mut Emitter<'_, ShelfEvent>,
        command: &Flag,
        causality: &Causality,
    ) -> Result<(), carrier_storage::CommandError> {
        let version = emit.event(ShelfEvent::Expensive(Expensive { id: command.0.to_string() }), causality)?;
        assert_eq!(emit.next_version("item", command.0).expect("read"), version + 1);
        Ok(())
    }
}

#[test]
fn the_library_numbers_each_entitys_events_from_one() {
    let (_dir, file) = file();
    let versions: Vec<u64> = ["a", "a", "b", "a"]
        .into_iter()
        .map(|id| file.execute(&Flag(id), &Causality::default()).expect("decided").envelope.aggregate_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 1, 3], "each entity its own count, in the transaction of its event");
    // A reaction's events are numbered the same way, after what commands recorded.
    file.apply("c", &[at(listed(100), 1, 1), at(repriced(2000), 2, 2)], 0).expect("apply");
    let outbox = file.outbox_pending(10).expect("outbox");
    let (_, last) = outbox.last().expect("the reaction's event");
    let last = Decoded::<ShelfEvent>::decode(
        &last.subject,
        |h| last.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)).map(|(_, v)| v.as_str()),
        &last.body,
    )
    .expect("decodes");
    assert_eq!((outbox.len(), last.envelope.aggregate_version), (5, 4), "the reaction's flag of a is its 4th");
}

/// A rebuild swaps every table of a set, also those past its aggregates (a projection's index
/// tables, keyed by something else than the entity): before, only as many tables as aggregates
/// were swapped, so a rebuilt index never replaced the live one.
#[test]
fn a_rebuild_swaps_every_table_of_a_set_also_an_index_past_its_aggregates() {
    use carrier_storage::{CacheSet, SwapCursor, SwapStep};
    const INDEX: Rows<i64> = Rows::new("index");
    let dir = tempfile::tempdir().expect("tempdir");
    let live = FileWriter::<Shelf>::open(dir.path().join("live.redb")).expect("open");
    let fresh = FileWriter::<Shelf>::open(dir.path().join("fresh.redb")).expect("open");
    for (file, price, key) in [(&live, 1, "stale"), (&fresh, 5, "rebuilt")] {
        file.decide_with(|txn, emit| {
            PRICES.open(txn)?.put("a", &price)?;
            INDEX.open(txn)?.put(key, &price)?;
            emit.event(ShelfEvent::Expensive(Expensive { id: "a".into() }), &Causality::default())?;
            Ok(())
        })
        .expect("written");
    }
    let sets = [CacheSet { tables: vec!["prices", "index"], aggregates: vec!["item"], consumer: "c".into() }];
    let mut cursor = SwapCursor::default();
    let swapped = loop {
        match live.swap_caches_step(&fresh, &sets, &mut cursor, 100).expect("step").expect("not behind") {
            SwapStep::More(_) => continue,
            SwapStep::Done(tables) => break tables,
        }
    };
    assert_eq!(swapped.iter().map(|t| t.table).collect::<Vec<_>>(), vec!["prices", "index"]);
    assert_eq!(price(&live), Some(5));
    assert_eq!(live.read(|txn| INDEX.all(txn)).expect("read"), vec![("rebuilt".to_string(), 5)]);
}

/// A process killed while redb wrote a new file's header left a file that never opened again;
/// a new file is now made beside it and renamed into place, and a leftover half-made one is
/// thrown away.
#[test]
fn a_file_half_made_by_a_killed_process_does_not_stop_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shelf.redb");
    let leftover = dir.path().join("shelf.redb.creating");
    // What a SIGKILL between redb's header writes leaves: zeros where the magic number goes.
    std::fs::write(&leftover, vec![0u8; 73_728]).expect("write");
    let file = FileWriter::<Shelf>::open(&path).expect("the next start opens a fresh file");
    assert_eq!(file.engine_stats().expect("stats").inbox, 0);
    assert!(!leftover.exists(), "the half-made file is gone");
    drop(file);
    FileWriter::<Shelf>::open(&path).expect("and it opens again");
}

#[test]
fn a_stale_or_parked_event_leaves_its_entitys_version_as_it_was() {
    let (_dir, file) = file();
    file.apply("c", &[at(listed(100), 1, 1), at(repriced(5), 2, 2)], 0).expect("apply");
    // An older version under a new id, and one far ahead: neither moves the entity's version.
    let outcome = file.apply("c", &[at(repriced(40), 1, 3), at(repriced(9), 5, 4)], 0).expect("apply");
    assert_eq!(outcome.dispositions, vec![Disposition::Stale { current: 2 }, Disposition::Parked { expected: 3 }]);
    assert_eq!(file.gaps().expect("gaps"), vec![("item".into(), "a".into(), 2, 5)]);
    // The next version still applies, and lets the parked one through after its own gap closes.
    let outcome = file.apply("c", &[at(repriced(1), 3, 5), at(repriced(2), 4, 6)], 0).expect("apply");
    assert_eq!(outcome.dispositions, vec![Disposition::Applied, Disposition::Applied]);
    assert_eq!(outcome.unparked, 1);
    assert_eq!(price(&file), Some(117));
}

#[test]
fn the_inbox_is_pruned_whole_by_its_time_index() {
    let (_dir, file) = file();
    file.apply("c", &[at(listed(100), 1, 1), at(repriced(5), 2, 2)], 0).expect("apply");
    file.apply("c", &[at(repriced(5), 3, 3)], 0).expect("apply");
    assert_eq!(file.inbox(10).expect("inbox").len(), 3);
    assert_eq!(file.inbox_indexed().expect("index"), 3, "each new id indexed once");
    assert_eq!(file.prune_inbox(std::time::Duration::from_secs(3600), 100).expect("prune"), 0, "nothing old yet");
    // A limit of one takes one batch whole: its ids and its index row go together.
    let first = file.prune_inbox(std::time::Duration::ZERO, 1).expect("prune");
    assert!(first == 2 || first == 1, "one batch: {first}");
    let rest = file.prune_inbox(std::time::Duration::ZERO, 100).expect("prune");
    assert_eq!(first + rest, 3);
    assert!(file.inbox(10).expect("inbox").is_empty());
    assert_eq!(file.inbox_indexed().expect("index"), 0);
    // Past the horizon, a redelivery is told by its version: stale, not applied again.
    let outcome = file.apply("c", &[at(repriced(5), 3, 3)], 0).expect("apply");
    assert_eq!(outcome.dispositions, vec![Disposition::Stale { current: 3 }]);
    assert_eq!(price(&file), Some(110));
}
