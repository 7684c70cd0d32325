//! A subscriber client that reconnects and resumes by itself: after a broken stream or a
//! collector restart it subscribes again with `since` set to the last cursor it received, so
//! every record arrives once (loss notices say what did not). A collector that keeps alerts
//! (`--jetstream`; its `Started` says `alerts_next_cursor`) resumes them the same way, with
//! `alerts_since`.

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
    /// The collector answered and refused the request as asked (a bad filter, a cursor outside
    /// retention, too many subscribers): asking again the same way will not help.
    #[error("the collector refused the request: {}: {}", status.code(), status.message())]
    Refused { status: Status },
    /// The collector refused this client (authentication, authorization, certificates).
    #[error("the collector refused this client: {reason}")]
    Denied { reason: String },
    /// No answer: the collector could not be reached (within `waited`, when a timeout was set).
    #[error("the collector is unreachable{}: {reason}", waited.map(|w| format!(" (gave up after {:.1} s)", w.as_secs_f64())).unwrap_or_default())]
    Unreachable {
        reason: String,
        waited: Option<Duration>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What kind of failure a [`FollowError`] is, for callers that tell them apart (`tail`'s exit
/// status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was refused as asked.
    Refused,
    /// The client was refused (authentication, authorization, certificates).
    Unauthenticated,
    /// The collector could not be reached.
    Unreachable,
    /// The client's own configuration (URL, TLS files).
    Usage,
}

impl FollowError {
    #[must_use]
    pub fn failure(&self) -> Failure {
        match self {
            Self::Refused { .. } => Failure::Refused,
            Self::Denied { .. } => Failure::Unauthenticated,
            Self::Unreachable { .. } => Failure::Unreachable,
            Self::Url { .. } | Self::Client(_) => Failure::Usage,
        }
    }
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
    /// An alert update (alerts have their own cursors, resumed where the collector keeps them).
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
    /// The last alert cursor, once the collector said it keeps alerts.
    last_alert_cursor: Option<u64>,
    stream: Option<Streaming<mapsentry_proto::v1::SubscribeResponse>>,
    retry_at: Instant,
    backoff: backon::ExponentialBuilder,
    /// Delays of the current run of failures (backon; a new run after a record arrives).
    delays: backon::ExponentialBackoff,
    /// Failures since the last item received.
    failures: u32,
    /// Give up when no subscription could be made for this long (None: never).
    timeout: Option<Duration>,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    /// Why the last attempt failed.
    last_failure: String,
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
            last_alert_cursor: request.alerts_since,
            request,
            stream: None,
            retry_at: Instant::now(),
            backoff: reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5)),
            delays: reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5)).build(),
            failures: 0,
            timeout: None,
            failing_since: None,
            last_failure: String::new(),
        })
    }

    /// Give up with [`FollowError::Unreachable`] when the collector cannot be reached for
    /// `timeout`: at the first subscription, after each disconnection, and for [`Self::stats`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
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

    /// The cursor of the last alert received, where the collector keeps alerts.
    #[must_use]
    pub fn last_alert_cursor(&self) -> Option<u64> {
        self.last_alert_cursor
    }

    /// The collector's counters.
    pub async fn stats(&mut self) -> Result<StatsResponse, FollowError> {
        let mut request = Request::new(StatsRequest {});
        if let Some(token) = &self.token {
            token.apply(&mut request);
        }
        let answer = match self.timeout {
            None => self.client.stats(request).await,
            Some(timeout) => {
                match tokio::time::timeout(timeout, self.client.stats(request)).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(FollowError::Unreachable {
                            reason: "no answer".into(),
                            waited: Some(timeout),
                        });
                    }
                }
            }
        };
        match answer {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(match client::refusal(&status) {
                Some(reason) => FollowError::Denied { reason },
                None if is_refusal(&status) => FollowError::Refused { status },
                None => FollowError::Unreachable {
                    reason: format!("{}: {}", status.code(), status.message()),
                    waited: None,
                },
            }),
        }
    }

    /// The next item. Refusals (a bad filter, a cursor outside retention) are errors; a broken
    /// stream is `Disconnected` and the next call resubscribes.
    pub async fn next(&mut self) -> Result<Followed, FollowError> {
        if self.stream.is_none() {
            // With a timeout, the last attempt is made at its end.
            let deadline = self
                .timeout
                .zip(self.failing_since)
                .map(|(timeout, since)| since + timeout);
            if let (Some(deadline), Some(since)) = (deadline, self.failing_since)
                && Instant::now() >= deadline
            {
                return Err(FollowError::Unreachable {
                    reason: self.last_failure.clone(),
                    waited: Some(since.elapsed()),
                });
            }
            sleep_until(deadline.map_or(self.retry_at, |d| d.min(self.retry_at))).await;
            let mut request = Request::new(SubscribeRequest {
                since: self.last_cursor,
                // A time resolves to a cursor once; resubscriptions resume from the cursor.
                since_unix_ns: if self.last_cursor.is_some() {
                    None
                } else {
                    self.request.since_unix_ns
                },
                alerts_since: self.last_alert_cursor,
                ..self.request.clone()
            });
            if let Some(token) = &self.token {
                token.apply(&mut request);
            }
            let subscribed = match self.timeout {
                None => self.client.subscribe(request).await,
                Some(timeout) => {
                    let left = deadline
                        .map_or(timeout, |d| d.saturating_duration_since(Instant::now()))
                        .max(Duration::from_millis(100));
                    tokio::time::timeout(left, self.client.subscribe(request))
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer")))
                }
            };
            match subscribed {
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
        self.failing_since = None;
        Ok(match item {
            Some(subscribe_response::Item::Event(record)) => {
                self.last_cursor = Some(record.cursor);
                Followed::Record(record)
            }
            Some(subscribe_response::Item::Alert(alert)) => {
                if self.last_alert_cursor.is_some() {
                    self.last_alert_cursor = Some(alert.cursor);
                }
                Followed::Alert(alert)
            }
            Some(subscribe_response::Item::Loss(loss)) => Followed::Loss(loss),
            Some(subscribe_response::Item::AgentRestart(restart)) => {
                Followed::AgentRestart(restart)
            }
            Some(subscribe_response::Item::Started(started)) => {
                // A live subscription resumes from where it started, not from "now" again (one
                // from a time resumes from that time until its first record arrives).
                if self.request.since_unix_ns.is_none() {
                    self.last_cursor = self
                        .last_cursor
                        .or(Some(started.next_cursor.saturating_sub(1)));
                }
                // Alerts resume only where the collector keeps them.
                self.last_alert_cursor = match started.alerts_next_cursor {
                    Some(next) => self.last_alert_cursor.or(Some(next.saturating_sub(1))),
                    None => None,
                };
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
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        let retry_in = self.delays.next().unwrap_or(Duration::ZERO);
        self.retry_at = now + retry_in;
        self.last_failure = format!("{}: {}", status.code(), status.message());
        Followed::Disconnected {
            reason: self.last_failure.clone(),
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
