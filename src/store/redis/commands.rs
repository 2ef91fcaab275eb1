//! How a batch of [`Write`]s becomes Redis commands: one MULTI/EXEC per batch (per hash-tag
//! group in a cluster), collections whose TTL only ever grows, the bounded event stream.

use std::time::Duration;

use crate::store::{EVENTS_STREAM, Key, Write};

/// The arguments of an XADD of `event` to the event stream, kept to about `max_len` entries.
pub(super) fn xadd(event: &serde_json::Value, max_len: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(EVENTS_STREAM)
        .arg("MAXLEN")
        .arg("~")
        .arg(max_len)
        .arg("*")
        .arg("event")
        .arg(event.to_string());
    cmd
}

/// The key a write touches (what decides its cluster slot).
pub(super) fn write_key(w: &Write) -> &str {
    match w {
        Write::Put { key, .. }
        | Write::Delete { key }
        | Write::SetAdd { key, .. }
        | Write::SetRemove { key, .. }
        | Write::ExpiringAdd { key, .. }
        | Write::ExpiringRemove { key, .. } => key.as_str(),
        Write::Event(_) => EVENTS_STREAM,
    }
}

/// One MULTI/EXEC applying `writes` (events to a stream of about `events_max_len`).
pub(super) fn transaction(writes: &[Write], events_max_len: usize) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for w in writes {
        match w {
            Write::Put { key, value, ttl } => {
                let cmd = pipe.cmd("SET").arg(key.as_str()).arg(value.as_slice());
                if let Some(t) = ttl {
                    cmd.arg("PX").arg(ttl_ms(*t));
                }
                cmd.ignore();
            }
            Write::Delete { key } => {
                pipe.del(key.as_str()).ignore();
            }
            Write::SetAdd { key, member, ttl } => {
                pipe.sadd(key.as_str(), member.as_slice()).ignore();
                grow_ttl(&mut pipe, key, *ttl);
            }
            Write::SetRemove { key, member } => {
                pipe.srem(key.as_str(), member.as_slice()).ignore();
            }
            Write::ExpiringAdd {
                key,
                member,
                until,
                prune_through,
                ttl,
            } => {
                // GT: a later `until` wins, an earlier one never shortens (Redis >= 6.2).
                pipe.cmd("ZADD")
                    .arg(key.as_str())
                    .arg("GT")
                    .arg(*until)
                    .arg(member.as_slice())
                    .ignore();
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(key.as_str())
                    .arg("-inf")
                    .arg(*prune_through)
                    .ignore();
                grow_ttl(&mut pipe, key, *ttl);
            }
            Write::ExpiringRemove { key, member } => {
                pipe.zrem(key.as_str(), member.as_slice()).ignore();
            }
            Write::Event(event) => {
                pipe.add_command(xadd(event, events_max_len)).ignore();
            }
        }
    }
    pipe
}

/// Gives a collection key `ttl` if it has none, and extends (never shortens) the one it
/// has: NX sets the TTL of a new key, GT extends an existing one, so the collection lives as
/// long as its longest-lived member needs (Redis >= 7.0).
fn grow_ttl(pipe: &mut redis::Pipeline, key: &Key, ttl: Option<Duration>) {
    if let Some(t) = ttl {
        let ms = ttl_ms(t);
        for condition in ["NX", "GT"] {
            pipe.cmd("PEXPIRE")
                .arg(key.as_str())
                .arg(ms)
                .arg(condition)
                .ignore();
        }
    }
}

pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    // Redis refuses PX 0; a zero TTL means "expire at once", so 1 ms.
    (ttl.as_millis() as u64).max(1)
}
