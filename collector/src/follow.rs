//! A subscriber client that reconnects and resumes by itself: after a broken stream or a
//! collector restart it subscribes again with `since` set to the last cursor it received, so
//! every record arrives once (loss notices say what did not).

use std::time::Duration;

use backon::BackoffBuilder as _;
use mapsentry_proto::client::{self, BearerToken, ClientError, ClientSecurity};
use mapsentry_proto::v1::{
    EventRecord, LossNotice, Started, StatsRequest, StatsResponse, SubscribeRequest,
    observer_client::ObserverClient, subscribe_response,
};
use tokio::time::{Instant, sleep_until};
use tonic::{Code, Request, Status, Streaming, transport::Channel};

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("collector URL {url:?} is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("the collector refused the subscription: {}: {}", status.code(), status.message())]
    Refused { status: Status },
    #[error("the collector refused this client: {reason}")]
    Denied { reason: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What a follower got next.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "records are nearly every item; boxing them would add an allocation per event"
)]
pub enum Followed {
    Started(Started),
    Record(EventRecord),
    /// An alert update (alerts have their own cursors and are not resumed).
    Alert(mapsentry_proto::v1::AlertRecord),
    Loss(LossNotice),
    /// A node's agent restarted: a gap in that node's capture.
    AgentRestart(mapsentry_proto::v1::AgentRestart),
    /// The stream broke; the follower resubscribes after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
}

#[derive(Debug)]
pub struct Follower {
    client: ObserverClient<Channel>,
    token: Option<BearerToken>,
    request: SubscribeRequest,
    last_cursor: Option<u64>,
    stream: Option<Streaming<mapsentry_proto::v1::SubscribeResponse>>,
    retry_at: Instant,
    backoff: backon::ExponentialBuilder,
    /// Delays of the current run of failures (backon; a new run after a record arrives).
    delays: backon::ExponentialBackoff,
    /// Failures since the last item received.
    failures: u32,
}

impl Follower {
    /// Follow `url` (`http://host:port`) with `request`; connects on the first `next`.
    pub fn new(
        url: &str,
        request: SubscribeRequest,
        max_message_bytes: usize,
    ) -> Result<Self, FollowError> {
        Self::secured(url, request, max_message_bytes, &ClientSecurity::default())
    }

    /// Follow `url` (`https://` with `security`'s CA, client certificate and token, or
    /// `http://`); connects on the first `next`.
    pub fn secured(
        url: &str,
        request: SubscribeRequest,
        max_message_bytes: usize,
        security: &ClientSecurity,
    ) -> Result<Self, FollowError> {
        let (endpoint, token) = client::endpoint(url, security).map_err(|e| match e {
            ClientError::Url { url, reason } => FollowError::Url { url, reason },
            other => FollowError::Client(other),
        })?;
        let channel = endpoint
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = ObserverClient::new(channel).max_decoding_message_size(max_message_bytes);
        Ok(Self {
            client,
            token,
            last_cursor: request.since,
            request,
            stream: None,
            retry_at: Instant::now(),
            backoff: reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5)),
            delays: reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5)).build(),
            failures: 0,
        })
    }

    /// Change the reconnect delays (exponential from `min` to `max`).
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = reconnect_backoff(min, max);
        self.delays = self.backoff.build();
        self
    }

    /// The cursor of the last record received: where a resubscription resumes.
    #[must_use]
    pub fn last_cursor(&self) -> Option<u64> {
        self.last_cursor
    }

    /// The collector's counters.
    pub async fn stats(&mut self) -> Result<StatsResponse, FollowError> {
        let mut request = Request::new(StatsRequest {});
        if let Some(token) = &self.token {
            token.apply(&mut request);
        }
        match self.client.stats(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(match client::refusal(&status) {
                Some(reason) => FollowError::Denied { reason },
                None => FollowError::Refused { status },
            }),
        }
    }

    /// The next item. Refusals (a bad filter, a cursor outside retention) are errors; a broken
    /// stream is `Disconnected` and the next call resubscribes.
    pub async fn next(&mut self) -> Result<Followed, FollowError> {
        if self.stream.is_none() {
            sleep_until(self.retry_at).await;
            let mut request = Request::new(SubscribeRequest {
                since: self.last_cursor,
                ..self.request.clone()
            });
            if let Some(token) = &self.token {
                token.apply(&mut request);
            }
            match self.client.subscribe(request).await {
                Ok(response) => self.stream = Some(response.into_inner()),
                Err(status) if client::refusal(&status).is_some() => {
                    return Err(FollowError::Denied {
                        reason: client::refusal(&status).unwrap_or_default(),
                    });
                }
                Err(status) if is_refusal(&status) => return Err(FollowError::Refused { status }),
                Err(status) => return Ok(self.disconnected(&status)),
            }
        }
        let Some(stream) = &mut self.stream else {
            unreachable!("set above")
        };
        let item = match stream.message().await {
            Ok(Some(response)) => response.item,
            Ok(None) => {
                return Ok(
                    self.disconnected(&Status::unavailable("the collector ended the subscription"))
                );
            }
            Err(status) if client::refusal(&status).is_some() => {
                return Err(FollowError::Denied {
                    reason: client::refusal(&status).unwrap_or_default(),
                });
            }
            Err(status) if is_refusal(&status) => return Err(FollowError::Refused { status }),
            Err(status) => return Ok(self.disconnected(&status)),
        };
        if self.failures > 0 {
            self.failures = 0;
            self.delays = self.backoff.build();
        }
        Ok(match item {
            Some(subscribe_response::Item::Event(record)) => {
                self.last_cursor = Some(record.cursor);
                Followed::Record(record)
            }
            Some(subscribe_response::Item::Alert(alert)) => Followed::Alert(alert),
            Some(subscribe_response::Item::Loss(loss)) => Followed::Loss(loss),
            Some(subscribe_response::Item::AgentRestart(restart)) => {
                Followed::AgentRestart(restart)
            }
            Some(subscribe_response::Item::Started(started)) => {
                // A live subscription resumes from where it started, not from "now" again.
                self.last_cursor = self
                    .last_cursor
                    .or(Some(started.next_cursor.saturating_sub(1)));
                Followed::Started(started)
            }
            None => Followed::Disconnected {
                reason: "an empty response".into(),
                retry_in: Duration::ZERO,
            },
        })
    }

    fn disconnected(&mut self, status: &Status) -> Followed {
        self.stream = None;
        self.failures += 1;
        let retry_in = self.delays.next().unwrap_or(Duration::ZERO);
        self.retry_at = Instant::now() + retry_in;
        Followed::Disconnected {
            reason: format!("{}: {}", status.code(), status.message()),
            retry_in,
        }
    }
}

/// Reconnect delays: `min`, doubling up to `max`, without end.
fn reconnect_backoff(min: Duration, max: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
}

fn is_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::ResourceExhausted
    )
}
