//! `Observer`: filtered, resumable subscriptions and the counters, over gRPC.

use std::{pin::Pin, sync::Arc};

use futures_core::Stream;
use mapsentry_proto::v1::{
    StatsRequest, StatsResponse, SubscribeRequest, SubscribeResponse, observer_server,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::Auth,
    filter::RecordFilter,
    hub::{Hub, SubscribeError, Subscription},
};

impl From<SubscribeError> for Status {
    fn from(error: SubscribeError) -> Self {
        match error {
            SubscribeError::TooOld { .. } | SubscribeError::Ahead { .. } => {
                Status::out_of_range(error.to_string())
            }
            SubscribeError::Closed => Status::unavailable(error.to_string()),
        }
    }
}

/// The `Observer` service of a collector.
#[derive(Debug, Clone)]
pub struct Observer {
    hub: Arc<Hub>,
    auth: Arc<Auth>,
}

impl Observer {
    #[must_use]
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            auth: Arc::default(),
        }
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
pub struct ResponseStream(Subscription);

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
        let request = request.into_inner();
        let filter = RecordFilter::new(request.filter.as_ref(), &request.kinds)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .within(scope)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let subscription = self.hub.subscribe(filter, request.since)?;
        Ok(Response::new(ResponseStream(subscription)))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.auth.subscriber(&request)?;
        Ok(Response::new(self.hub.stats()))
    }
}
