//! The store's behaviour, checked identically on the embedded store and on a real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiongate::config::Env;
use sessiongate::store::keys::{Digest, Keys};
use sessiongate::store::memory::MemoryStore;
use sessiongate::store::redis::{RedisStore, Timeouts};
use sessiongate::store::{GroupRead, Notice, Store, StoreError, Write};

use crate::support::{RedisCluster, RedisServer, eventually};

const TIMEOUTS: Timeouts = Timeouts {
    command: Duration::from_millis(500),
    connect: Duration::from_millis(250),
};

fn redis_store(r: &RedisServer) -> Arc<dyn Store> {
    Arc::new(RedisStore::connect(&r.url(), false, Env::Test, TIMEOUTS).expect("valid URL"))
}

/// The behavioural suite both implementations must pass.
async fn suite(s: Arc<dyn Store>) {
    let k = Keys::new(Env::Test);
    s.ping().await.unwrap();

    // get / put / delete in atomic batches.
    let (a, b) = (k.session_token("a"), k.session_token("b"));
    assert_eq!(s.get(&a).await.unwrap(), None);
    s.write(vec![
        Write::Put {
            key: a.clone(),
            value: b"one".to_vec(),
            ttl: None,
        },
        Write::Put {
            key: b.clone(),
            value: b"two".to_vec(),
            ttl: Some(Duration::from_secs(60)),
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&a).await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(
        s.get_many(&[a.clone(), k.session_token("none"), b.clone()])
            .await
            .unwrap(),
        vec![Some(b"one".to_vec()), None, Some(b"two".to_vec())]
    );
    assert_eq!(s.ttl(&a).await.unwrap(), Some(None));
    let ttl = s.ttl(&b).await.unwrap().unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(58) && ttl <= Duration::from_secs(60),
        "{ttl:?}"
    );
    assert_eq!(s.ttl(&k.session_token("none")).await.unwrap(), None);
    s.write(vec![Write::Delete { key: a.clone() }])
        .await
        .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), None);

    // Binary values survive untouched.
    let bin: Vec<u8> = (0..=255).collect();
    s.write(vec![Write::Put {
        key: a.clone(),
        value: bin.clone(),
        ttl: None,
    }])
    .await
    .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), Some(bin));

    // put_if_absent: exactly one winner, even when many race.
    let lock = k.session_token("lock");
    let racers = (0..20).map(|i| {
        let s = s.clone();
        let lock = lock.clone();
        tokio::spawn(async move {
            s.put_if_absent(
                &lock,
                format!("{i}").as_bytes(),
                Some(Duration::from_secs(30)),
            )
            .await
            .unwrap()
        })
    });
    let wins = futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1);
    assert!(s.ttl(&lock).await.unwrap().unwrap().is_some());

    // Only the owner releases a lock: a call whose lock expired and was taken by another
    // must not release the new owner's.
    let owner = s.get(&lock).await.unwrap().unwrap();
    assert!(!s.delete_if_equals(&lock, b"not-the-owner").await.unwrap());
    assert_eq!(
        s.get(&lock).await.unwrap().as_deref(),
        Some(owner.as_slice())
    );
    assert!(s.delete_if_equals(&lock, &owner).await.unwrap());
    assert_eq!(s.get(&lock).await.unwrap(), None);
    assert!(!s.delete_if_equals(&lock, &owner).await.unwrap());

    // Compare and swap: only from the value read, and only one of two racing writers.
    let rec = k.user("cas");
    s.write(vec![Write::Put {
        key: rec.clone(),
        value: b"v1".to_vec(),
        ttl: Some(Duration::from_secs(60)),
    }])
    .await
    .unwrap();
    assert!(s.compare_and_swap(&rec, b"v1", b"v2-a").await.unwrap());
    assert!(!s.compare_and_swap(&rec, b"v1", b"v2-b").await.unwrap());
    assert_eq!(s.get(&rec).await.unwrap().as_deref(), Some(&b"v2-a"[..]));
    assert!(s.ttl(&rec).await.unwrap().unwrap().is_some(), "TTL kept");
    assert!(
        !s.compare_and_swap(&k.user("absent"), b"", b"x")
            .await
            .unwrap()
    );

    // A zero TTL expires at once rather than living forever.
    s.write(vec![Write::Put {
        key: b.clone(),
        value: b"x".to_vec(),
        ttl: Some(Duration::ZERO),
    }])
    .await
    .unwrap();
    eventually(Duration::from_secs(1), || async {
        s.get(&b).await.unwrap().is_none().then_some(())
    })
    .await;

    // Sets: add, remove, TTL only grows; an emptied set disappears.
    let set = k.user_sessions("set-test");
    let add = |m: &str, secs| Write::SetAdd {
        key: set.clone(),
        member: m.as_bytes().to_vec(),
        ttl: Some(Duration::from_secs(secs)),
    };
    s.write(vec![add("s1", 100), add("s2", 10)]).await.unwrap();
    let mut members = s.set_members(&set).await.unwrap();
    members.sort();
    assert_eq!(members, vec![b"s1".to_vec(), b"s2".to_vec()]);
    let ttl = s.ttl(&set).await.unwrap().unwrap().unwrap();
    assert!(ttl > Duration::from_secs(98), "set TTL shrank to {ttl:?}");
    s.write(vec![add("s3", 300)]).await.unwrap();
    assert!(s.ttl(&set).await.unwrap().unwrap().unwrap() > Duration::from_secs(298));
    s.write(vec![
        Write::SetRemove {
            key: set.clone(),
            member: b"s1".to_vec(),
        },
        Write::SetRemove {
            key: set.clone(),
            member: b"s2".to_vec(),
        },
        Write::SetRemove {
            key: set.clone(),
            member: b"s3".to_vec(),
        },
    ])
    .await
    .unwrap();
    assert!(s.set_members(&set).await.unwrap().is_empty());
    assert_eq!(s.ttl(&set).await.unwrap(), None);

    // Expiry-ordered sets: a member's `until` only rises, every write prunes what expired,
    // reads see only what is still current.
    let revoked = k.revoked();
    let add = |m: &str, until: i64, now: i64| Write::ExpiringAdd {
        key: revoked.clone(),
        member: m.as_bytes().to_vec(),
        until,
        prune_through: now,
        ttl: Some(Duration::from_secs(600)),
    };
    s.write(vec![add("a", 100, 0), add("b", 200, 0), add("a", 50, 0)])
        .await
        .unwrap();
    let mut got = s.expiring_members(&revoked, 0).await.unwrap();
    got.sort();
    assert_eq!(got, vec![(b"a".to_vec(), 100), (b"b".to_vec(), 200)]);
    assert_eq!(
        s.expiring_members(&revoked, 150).await.unwrap(),
        vec![(b"b".to_vec(), 200)]
    );
    // A write at time 150 prunes `a` from the store itself.
    s.write(vec![add("c", 300, 150)]).await.unwrap();
    let mut got = s.expiring_members(&revoked, 0).await.unwrap();
    got.sort();
    assert_eq!(got, vec![(b"b".to_vec(), 200), (b"c".to_vec(), 300)]);
    s.write(vec![Write::ExpiringRemove {
        key: revoked.clone(),
        member: b"b".to_vec(),
    }])
    .await
    .unwrap();
    assert_eq!(
        s.expiring_members(&revoked, 0).await.unwrap(),
        vec![(b"c".to_vec(), 300)]
    );

    // A type mismatch is data corruption, not an outage.
    let e = s.set_members(&a).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");

    // Counters: fixed window, one per subject.
    let rate = k.rate("migrate", &Digest::of(b"caller"));
    for want in 1..=3 {
        assert_eq!(
            s.incr(&rate, 1, Duration::from_secs(60)).await.unwrap(),
            want
        );
    }
    assert!(s.ttl(&rate).await.unwrap().unwrap().unwrap() <= Duration::from_secs(60));
    // By more than one; read back as decimal text.
    assert_eq!(
        s.incr(&rate, 10, Duration::from_secs(60)).await.unwrap(),
        13
    );
    assert_eq!(s.get(&rate).await.unwrap().as_deref(), Some(&b"13"[..]));

    // Events: appended in order, newest last.
    for i in 0..5 {
        s.append_event(&serde_json::json!({"type": "test.event", "n": i}))
            .await
            .unwrap();
    }
    let ev = s.recent_events(3).await.unwrap();
    assert_eq!(
        ev.iter()
            .map(|e| e["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );

    // Consumer groups: a new group reads what is appended after it exists; what it read
    // stays pending until acknowledged, and a later reader finds it there.
    // (From now: what was appended before is not this group's.)
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // The next millisecond (a spin of at most one): appends from here on are after `from`.
    let from = now_ms() + 1;
    while now_ms() < from {
        std::hint::spin_loop();
    }
    s.group_create("g1", from).await.unwrap();
    s.group_create("g1", from).await.unwrap();
    for i in 5..9 {
        s.append_event(&serde_json::json!({"type": "test.event", "n": i}))
            .await
            .unwrap();
    }
    let n = |e: &sessiongate::store::StreamEntry| e.event.as_ref().unwrap()["n"].as_i64().unwrap();
    let first = s.group_read("g1", GroupRead::New, 3).await.unwrap();
    assert_eq!(first.iter().map(n).collect::<Vec<_>>(), vec![5, 6, 7]);
    let rest = s.group_read("g1", GroupRead::New, 10).await.unwrap();
    assert_eq!(rest.iter().map(n).collect::<Vec<_>>(), vec![8]);
    assert!(
        s.group_read("g1", GroupRead::New, 10)
            .await
            .unwrap()
            .is_empty()
    );
    s.group_ack("g1", &[first[1].id.clone(), rest[0].id.clone()])
        .await
        .unwrap();
    let pending = s
        .group_read("g1", GroupRead::PendingAfter("0".into()), 10)
        .await
        .unwrap();
    assert_eq!(pending.iter().map(n).collect::<Vec<_>>(), vec![5, 7]);
    let after = s
        .group_read("g1", GroupRead::PendingAfter(pending[0].id.clone()), 10)
        .await
        .unwrap();
    assert_eq!(after.iter().map(n).collect::<Vec<_>>(), vec![7]);
    // Another group has a cursor of its own.
    s.group_create("g2", now_ms() + 1000).await.unwrap();
    assert!(
        s.group_read("g2", GroupRead::New, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A group that does not exist (a Redis that lost it) is an error the reader can act on.
    assert!(s.group_read("nope", GroupRead::New, 1).await.is_err());

    // Leases: renewed by their holder only.
    let lease = k.rate("lease", &Digest::of(b"l"));
    assert!(
        s.put_if_absent(&lease, b"me", Some(Duration::from_secs(2)))
            .await
            .unwrap()
    );
    assert!(
        !s.renew_if_equals(&lease, b"other", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        s.renew_if_equals(&lease, b"me", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(s.ttl(&lease).await.unwrap().unwrap().unwrap() > Duration::from_secs(30));

    // Invalidation channel: what is published arrives at subscribers. Redis delivers only
    // once the background subscription is up, so publish until it arrives.
    let mut rx = s.subscribe();
    let want = Notice::Message(Arc::from(&b"drop:session-1"[..]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    'delivered: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never arrived"
        );
        s.publish(b"drop:session-1").await.unwrap();
        let round = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(Ok(n)) = tokio::time::timeout_at(round, rx.recv()).await {
            if n == want {
                break 'delivered;
            }
        }
    }
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    suite(Arc::new(MemoryStore::new(Env::Test))).await;
}

#[tokio::test]
async fn redis_store_passes_the_suite() {
    let redis = RedisServer::start().await;
    suite(redis_store(&redis)).await;
}

/// A group created from a millisecond reads the events of that millisecond on, and none of
/// the one before, however many that one holds. Ids written by hand, so that several events
/// share a millisecond every time (appended for real, they only sometimes do).
#[tokio::test]
async fn a_group_starts_at_its_millisecond_and_not_within_the_one_before() {
    let redis = RedisServer::start().await;
    let s = redis_store(&redis);
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (id, n) in [
        ("1000-0", 0),
        ("1000-5", 1),
        ("1000-18446744073709551614", 2),
        ("1001-0", 3),
        ("1001-3", 4),
        ("1002-0", 5),
    ] {
        let _: String = ::redis::cmd("XADD")
            .arg(sessiongate::store::EVENTS_STREAM)
            .arg(id)
            .arg("event")
            .arg(serde_json::json!({ "n": n }).to_string())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    s.group_create("g", 1001).await.unwrap();
    let read = s.group_read("g", GroupRead::New, 10).await.unwrap();
    assert_eq!(
        read.iter()
            .map(|e| e.event.as_ref().unwrap()["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );
}

/// An event trimmed from the bounded stream before a webhook acknowledged it comes back from
/// the group's pending list without its body: the reader learns it is gone, nothing breaks.
#[tokio::test]
async fn an_event_trimmed_before_it_was_acknowledged_reads_back_empty() {
    let redis = RedisServer::start().await;
    let s = redis_store(&redis);
    s.group_create("g", 0).await.unwrap();
    for i in 0..3 {
        s.append_event(&serde_json::json!({"n": i})).await.unwrap();
    }
    assert_eq!(
        s.group_read("g", GroupRead::New, 10).await.unwrap().len(),
        3
    );
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = ::redis::cmd("XTRIM")
        .arg(sessiongate::store::EVENTS_STREAM)
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    let pending = s
        .group_read("g", GroupRead::PendingAfter("0".into()), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(
        pending
            .iter()
            .map(|e| e.event.is_some())
            .collect::<Vec<_>>(),
        [false, false, true]
    );
    assert_eq!(pending[2].event.as_ref().unwrap()["n"], 2);
}

/// The same suite on a three-master Redis Cluster: its batches span slots (two session ids
/// with different hash tags, a set, the event stream), so they exercise the per-slot split.
#[tokio::test]
async fn redis_cluster_store_passes_the_suite() {
    let cluster = RedisCluster::start().await;
    let s: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&cluster.urls(), true, Env::Test, TIMEOUTS).expect("valid URLs"),
    );
    suite(s).await;
}

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers_without_restart() {
    let mut redis = RedisServer::start().await;
    let s = redis_store(&redis);
    let key = Keys::new(Env::Test).session_token("outage");
    s.write(vec![Write::Put {
        key: key.clone(),
        value: b"v".to_vec(),
        ttl: None,
    }])
    .await
    .unwrap();

    redis.kill().await;
    for _ in 0..3 {
        let started = Instant::now();
        let e = s.get(&key).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        // Bounded by the command timeout (500 ms), not by reconnect backoff or TCP.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "took {:?}",
            started.elapsed()
        );
    }
    // What a gRPC caller sees.
    let status: tonic::Status = sessiongate::error::Error::from(s.ping().await.unwrap_err()).into();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(crate::support::reason(&status), "STORE_UNAVAILABLE");

    redis.restart().await;
    // The same store object reconnects by itself (no persistence here: the key is gone).
    eventually(Duration::from_secs(3), || async { s.ping().await.ok() }).await;
    s.write(vec![Write::Put {
        key: key.clone(),
        value: b"w".to_vec(),
        ttl: None,
    }])
    .await
    .unwrap();
    assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"w"[..]));
}

#[tokio::test]
async fn hung_redis_answers_unavailable_within_the_timeout() {
    let redis = RedisServer::start().await;
    let s = redis_store(&redis);
    s.ping().await.unwrap();
    redis.pause();
    let started = Instant::now();
    let e = s
        .get(&Keys::new(Env::Test).session_token("x"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    redis.resume();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(900),
        "took {took:?}"
    );
    eventually(Duration::from_secs(3), || async { s.ping().await.ok() }).await;
}

#[tokio::test]
async fn redis_with_aof_keeps_data_across_a_crash() {
    let mut redis = RedisServer::start_with_aof_always().await;
    let s = redis_store(&redis);
    let key = Keys::new(Env::Test).session_token("durable");
    s.write(vec![Write::Put {
        key: key.clone(),
        value: b"kept".to_vec(),
        ttl: Some(Duration::from_secs(600)),
    }])
    .await
    .unwrap();
    // `always`: the write is on disk before Redis replies. (With the shipped `everysec`,
    // Redis usually write(2)s before replying too, but postpones the write for up to 2 s while
    // a background fsync is slow, so a killed process can lose what it acknowledged last: seen
    // on a slow disk. R1 in faults.rs measures that setting under load.)
    // Check that AOF is really on, or this test would prove nothing.
    assert!(aof_enabled(redis.port()).await, "AOF is not enabled");
    redis.kill().await;
    redis.restart().await;
    eventually(Duration::from_secs(3), || async { s.ping().await.ok() }).await;
    assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"kept"[..]));
}

/// True if Redis runs with AOF on and its last AOF write succeeded.
/// reliability.md R7: a Redis that would lose acknowledged writes is named at start-up.
#[tokio::test]
async fn a_redis_without_aof_or_with_eviction_is_warned_about() {
    let plain = RedisServer::start().await;
    let s = redis_store(&plain);
    let w = s.durability_warnings().await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("appendonly no"), "{w:?}");
    let durable = RedisServer::start_with_aof().await;
    let s = redis_store(&durable);
    assert!(s.durability_warnings().await.is_empty());
    let client = ::redis::Client::open(durable.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut c)
        .await
        .unwrap();
    let w = s.durability_warnings().await;
    assert!(w.len() == 1 && w[0].contains("allkeys-lru"), "{w:?}");
    // The embedded store has its own start-up warning (config); nothing here.
    assert!(
        MemoryStore::new(Env::Test)
            .durability_warnings()
            .await
            .is_empty()
    );
}

async fn aof_enabled(port: u16) -> bool {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = ::redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines().any(|l| l.trim() == "aof_enabled:1")
        && info.lines().any(|l| l.trim() == "aof_last_write_status:ok")
}
