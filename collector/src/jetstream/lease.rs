//! Leases in a JetStream key-value bucket: one holder per key at a time, among the replicas.
//! Used for the evaluation partitions (`eval.<p>`) and the ledger keeper (`ledger`).
//!
//! A lease is a key whose value names its holder; every write is a compare-and-set on the key's
//! revision (JetStream KV is linearizable per key: its stream is replicated with Raft). Expiry
//! is judged by observation, as Kubernetes' leader election does, not by comparing clocks:
//!
//! - the holder renews every `ttl / 3` and stops acting as holder `ttl / 2` after the start of
//!   its last successful renewal ([`Held::valid`]);
//! - a candidate takes a lease over only after it has seen the same revision for a whole `ttl`
//!   on its own monotonic clock, by a compare-and-set on that revision.
//!
//! So the old holder has stopped before anyone else can take over, whatever the wall clocks
//! say; only the clocks' rates must agree within a factor of two. What each holder does is made
//! safe against an overlap anyway (the evaluation's alert updates are compare-and-set too).
//!
//! A lease's value carries its holder's progress (for a partition: the floor from which a new
//! holder must re-read the stream), so a takeover continues where the last holder stood.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use serde::{Deserialize, Serialize};

/// A lease's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    pub holder: String,
    /// Everything before this (an events stream sequence) is accounted for by the holders so
    /// far: a new holder starts reading after it.
    #[serde(default)]
    pub floor: u64,
    /// How far the holder had read (the next holder re-reads `floor+1..=position`).
    #[serde(default)]
    pub position: u64,
}

/// A lease this replica holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub key: String,
    pub revision: u64,
    /// Start of the last successful renewal (or of the acquisition).
    renewed: Instant,
    /// The value when it was acquired (the previous holder's progress).
    pub previous: LeaseValue,
}

impl Held {
    /// Whether this replica may still act as the holder: less than `ttl / 2` since the start of
    /// its last successful renewal.
    #[must_use]
    pub fn valid(&self, ttl: Duration) -> bool {
        self.renewed.elapsed() < ttl / 2
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {key}: reading it failed")]
    Read {
        key: String,
        #[source]
        source: kv::EntryError,
    },
    #[error("lease {key}: its value is not a lease")]
    Value {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("lease {key}: writing it failed")]
    Write {
        key: String,
        #[source]
        source: kv::UpdateError,
    },
}

/// How a renewal went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Someone else wrote the key: the lease is gone.
    Lost,
    /// The write did not go through (NATS unreachable, a timeout): still held while
    /// [`Held::valid`].
    Failed,
}

/// One replica's view of the leases in a bucket.
#[derive(Debug)]
pub struct Leases {
    kv: kv::Store,
    me: String,
    ttl: Duration,
    /// Per key, the revision last seen and since when (this replica's clock).
    observed: HashMap<String, (u64, Instant)>,
}

impl Leases {
    #[must_use]
    pub fn new(kv: kv::Store, me: impl Into<String>, ttl: Duration) -> Self {
        Self {
            kv,
            me: me.into(),
            ttl,
            observed: HashMap::new(),
        }
    }

    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    #[must_use]
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Take `key` if it is free, released, or unchanged for a whole ttl; None when someone else
    /// holds it.
    pub async fn try_acquire(&mut self, key: &str) -> Result<Option<Held>, LeaseError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|source| LeaseError::Read {
                key: key.to_owned(),
                source,
            })?;
        let started = Instant::now();
        let (expected, previous) = match entry {
            None => (0, LeaseValue::default()),
            Some(entry) => {
                let previous = match entry.operation {
                    Operation::Delete | Operation::Purge => LeaseValue::default(),
                    Operation::Put => serde_json::from_slice(&entry.value).map_err(|source| {
                        LeaseError::Value {
                            key: key.to_owned(),
                            source,
                        }
                    })?,
                };
                let free = matches!(entry.operation, Operation::Delete | Operation::Purge)
                    || previous.holder.is_empty()
                    || previous.holder == self.me;
                if !free {
                    let seen = self
                        .observed
                        .entry(key.to_owned())
                        .or_insert((entry.revision, started));
                    if seen.0 != entry.revision {
                        *seen = (entry.revision, started);
                    }
                    if seen.1.elapsed() < self.ttl {
                        return Ok(None);
                    }
                    tracing::info!(key, holder = %previous.holder, "taking over a lease not renewed for its ttl");
                }
                (entry.revision, previous)
            }
        };
        let value = LeaseValue {
            holder: self.me.clone(),
            ..previous.clone()
        };
        match self.write(key, &value, expected).await {
            Ok(revision) => {
                self.observed.remove(key);
                Ok(Some(Held {
                    key: key.to_owned(),
                    revision,
                    renewed: started,
                    previous,
                }))
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(source) => Err(LeaseError::Write {
                key: key.to_owned(),
                source,
            }),
        }
    }

    /// Renew `held` with the holder's progress.
    pub async fn renew(&self, held: &mut Held, floor: u64, position: u64) -> Renewal {
        let started = Instant::now();
        let value = LeaseValue {
            holder: self.me.clone(),
            floor,
            position,
        };
        match self.write(&held.key, &value, held.revision).await {
            Ok(revision) => {
                held.revision = revision;
                held.renewed = started;
                Renewal::Renewed
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(key = %held.key, "lease lost: another replica wrote it");
                Renewal::Lost
            }
            Err(error) => {
                tracing::warn!(key = %held.key, %error, "cannot renew a lease");
                Renewal::Failed
            }
        }
    }

    /// Give `held` up, with the holder's final progress: the next candidate takes it at once.
    pub async fn release(&self, held: Held, floor: u64, position: u64) {
        let value = LeaseValue {
            holder: String::new(),
            floor,
            position,
        };
        if let Err(error) = self.write(&held.key, &value, held.revision).await {
            tracing::warn!(key = %held.key, %error, "cannot release a lease (it expires instead)");
        }
    }

    async fn write(
        &self,
        key: &str,
        value: &LeaseValue,
        revision: u64,
    ) -> Result<u64, kv::UpdateError> {
        let bytes = bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        self.kv.update(key, bytes, revision).await
    }

    /// Say this replica is alive (`member.<id>`), for the fair share of partitions.
    pub async fn heartbeat(&self) {
        let key = format!("member.{}", kv_token(&self.me));
        if let Err(error) = self.kv.put(&key, bytes::Bytes::new()).await {
            tracing::debug!(%error, "cannot write this replica's membership");
        }
    }

    /// Replicas whose membership was written within two ttls (by the server's clock, compared
    /// with this one's: an estimate, used only to share partitions fairly). At least 1.
    pub async fn members(&self) -> usize {
        use futures_util::StreamExt as _;
        let Ok(keys) = self.kv.keys().await else {
            return 1;
        };
        let keys: Vec<String> = keys
            .filter_map(|k| async move { k.ok() })
            .filter(|k| std::future::ready(k.starts_with("member.")))
            .collect()
            .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut live = 0;
        for key in keys {
            if let Ok(Some(entry)) = self.kv.entry(key).await
                && entry.operation == Operation::Put
                && now - entry.created.unix_timestamp_nanos() < 2 * self.ttl.as_nanos() as i128
            {
                live += 1;
            }
        }
        live.max(1)
    }

    /// Forget this replica's membership (at shutdown).
    pub async fn leave(&self) {
        let key = format!("member.{}", kv_token(&self.me));
        let _ = self.kv.delete(&key).await;
    }
}

/// `text` as a key token: what a KV key allows (`[-_=a-zA-Z0-9]`), the rest as `_`.
#[must_use]
pub fn kv_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
