//! The in-memory store at and near its capacity: what a new family costs in an empty store,
//! in a full one (refused), and in one whose families have expired (each insertion also
//! removes expired ones), next to the raw `HashMap` operations measured in the same run.
//!
//! The full-store figure is the one that matters for availability: every store call waits
//! on the same lock, so a refusal must not cost more than an insertion. The last line is
//! what a refusal used to cost: one pass over every entry (`HashMap::retain`).
//!
//! Run: `cargo bench --bench memory_store` (1,000,000 families, the default capacity).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use token_service::token::refresh::{FamilyId, RefreshToken};
use token_service::token::store::memory::MemoryStore;
use token_service::token::store::{FamilyRecord, Store, StoreError};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn families(n: usize, expires_at: u64) -> Vec<(FamilyId, FamilyRecord)> {
    (0..n)
        .map(|_| {
            let id = FamilyId::generate().unwrap();
            let current = RefreshToken::generate(id.clone()).unwrap().hash();
            let record = FamilyRecord {
                current,
                retired: Vec::new(),
                generation: 0,
                revoked: false,
                expires_at,
                client_id: "web".into(),
                // About the size of a sealed grant.
                data: "x".repeat(200),
            };
            (id, record)
        })
        .collect()
}

/// Creates every family; returns calls per second and how many were refused as full.
async fn create_all(store: &MemoryStore, batch: Vec<(FamilyId, FamilyRecord)>) -> (f64, usize) {
    let n = batch.len();
    let mut full = 0;
    let started = Instant::now();
    for (id, record) in batch {
        match store.create_family(&id, record).await {
            Ok(()) => {}
            Err(StoreError::Full) => full += 1,
            Err(e) => panic!("create_family: {e}"),
        }
    }
    (n as f64 / started.elapsed().as_secs_f64(), full)
}

fn say(what: &str, rate: f64, raw: f64) {
    println!(
        "{what:<52} {rate:>12.0}/s   raw HashMap insert {raw:>12.0}/s   ratio {:.2}",
        rate / raw
    );
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let capacity = if quick { 2_000 } else { 1_000_000 };
    let extra = capacity / 10;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("memory store, capacity {capacity} families");
        // The raw primitive: the same records into a plain map.
        let batch = families(capacity, unix_now() + 3_600);
        let started = Instant::now();
        let mut raw_map = HashMap::with_capacity(0);
        for (id, record) in batch.clone() {
            raw_map.insert(id, record);
        }
        let raw = capacity as f64 / started.elapsed().as_secs_f64();

        let store = MemoryStore::new(capacity);
        let (rate, full) = create_all(&store, batch).await;
        assert_eq!(full, 0);
        say("create into an empty store", rate, raw);

        let (rate, full) = create_all(&store, families(extra, unix_now() + 3_600)).await;
        assert_eq!(full, extra, "a store full of live families refuses");
        say("create refused: store full of live families", rate, raw);

        // Families that expire in 2 s, then new ones after they have.
        let expiring = MemoryStore::new(capacity);
        let expires_at = unix_now() + 2;
        let (_, full) = create_all(&expiring, families(capacity, expires_at)).await;
        assert_eq!(full, 0);
        let fresh = families(extra, unix_now() + 3_600);
        while unix_now() <= expires_at {
            std::thread::sleep(Duration::from_millis(100));
        }
        let (rate, full) = create_all(&expiring, fresh).await;
        assert_eq!(full, 0, "expired families make room");
        say("create into a full store of expired families", rate, raw);

        // What each refusal cost before: one pass over every entry.
        let now = unix_now();
        let started = Instant::now();
        raw_map.retain(|_, f| f.expires_at > now);
        println!(
            "one pass over {} entries (HashMap::retain): {:.1} ms",
            raw_map.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    });
}
