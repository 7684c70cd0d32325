//! `Observer`: filtered, resumable subscriptions and the counters, over gRPC.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures_core::Stream;
use mapsentry_proto::v1::{
    StatsRequest, StatsResponse, SubscribeRequest, SubscribeResponse, observer_server,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Auth, Scope},
    filter::RecordFilter,
    hub::{Hub, SubscribeError, Subscription},
};

impl From<SubscribeError> for Status {
    fn from(error: SubscribeError) -> Self {
        match error {
            SubscribeError::TooOld { .. }
            | SubscribeError::Ahead { .. }
            | SubscribeError::AlertsAhead { .. } => Status::out_of_range(error.to_string()),
            SubscribeError::AlertsNotKept => Status::failed_precondition(error.to_string()),
            SubscribeError::Closed | SubscribeError::Unavailable { .. } => {
                Status::unavailable(error.to_string())
            }
        }
    }
}

/// Subscriptions served at once, at most `max`.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    used: AtomicUsize,
}

impl Slots {
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// Take a slot, or refuse with `RESOURCE_EXHAUSTED` (counted in `hub`) when all are taken.
    fn take(self: &Arc<Self>, hub: &Hub) -> Result<Slot, Status> {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max).then_some(used + 1)
            });
        if taken.is_err() {
            hub.count_refused_subscriber();
            return Err(Status::resource_exhausted(format!(
                "this collector already serves its maximum of {} subscribers (--max-subscribers); \
                 try again later",
                self.max
            )));
        }
        Ok(Slot(Arc::clone(self)))
    }

    /// Subscriptions being served.
    #[must_use]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One taken slot, given back when the subscription's stream is dropped.
#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `Observer` service of a collector.
#[derive(Debug, Clone)]
pub struct Observer {
    hub: Arc<Hub>,
    auth: Arc<Auth>,
    slots: Arc<Slots>,
    /// The largest `Stats` answer (the encoding limit of the server).
    max_stats_bytes: usize,
}

impl Observer {
    #[must_use]
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            auth: Arc::default(),
            slots: Arc::new(Slots::new(usize::MAX)),
            max_stats_bytes: 4 << 20,
        }
    }

    /// Answer `Stats` in at most `bytes` (nodes beyond are counted as omitted).
    #[must_use]
    pub fn with_max_stats_bytes(mut self, bytes: usize) -> Self {
        self.max_stats_bytes = bytes;
        self
    }

    /// Serve at most `slots.max` subscriptions at once; beyond, `RESOURCE_EXHAUSTED`.
    #[must_use]
    pub fn with_slots(mut self, slots: Arc<Slots>) -> Self {
        self.slots = slots;
        self
    }

    /// Authenticate subscribers with `auth` and limit each to its namespaces.
    #[must_use]
    pub fn with_auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = auth;
        self
    }
}

/// A subscription as a gRPC response stream.
#[derive(Debug)]
pub struct ResponseStream(
    Subscription,
    #[expect(dead_code, reason = "held: frees the slot when dropped")] Slot,
);

impl Stream for ResponseStream {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|item| item.map(Ok))
    }
}

#[tonic::async_trait]
impl observer_server::Observer for Observer {
    type SubscribeStream = ResponseStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let scope = self.auth.subscriber(&request)?;
        let slot = self.slots.take(&self.hub)?;
        let request = request.into_inner();
        let filter = RecordFilter::new(request.filter.as_ref(), &request.kinds)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .within(scope)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let since = match (request.since, request.since_unix_ns) {
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument(
                    "since and since_unix_ns: give a cursor or a time, not both",
                ));
            }
            (None, Some(time_ns)) => self.hub.since_time(time_ns),
            (since, None) => since,
        };
        let since = crate::jetstream::subscribe::Since {
            events: since,
            alerts: request.alerts_since,
        };
        let subscription = self.hub.subscribe_from(filter, since).await?;
        Ok(Response::new(ResponseStream(subscription, slot)))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let scope = self.auth.subscriber(&request)?;
        Ok(Response::new(
            self.hub
                .stats_within(scope == Scope::All, self.max_stats_bytes),
        ))
    }
}
