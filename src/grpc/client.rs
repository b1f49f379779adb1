//! A typed client for the scheduler's `Router` service, for service-to-service use.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use l2d::RouterClient;
//! use std::time::Duration;
//!
//! let mut router = RouterClient::connect("127.0.0.1:50051").await?;
//! let answer = router
//!     .ask(
//!         l2d::Ask::new(
//!             "Which NFL team represented the AFC at Super Bowl 50?",
//!             "Super Bowl 50 was an American football game ... The American Football \
//!              Conference (AFC) champion Denver Broncos defeated ...",
//!         )
//!         .id("56be4db0acb8001400a502ec")
//!         .budget(25.0)
//!         .timeout(Duration::from_secs(2)),
//!     )
//!     .await?;
//! println!("{} (from {}, cost {})", answer.text, answer.expert_id, answer.cost);
//! # Ok(())
//! # }
//! ```

use super::pb::{self, router_client};
use std::time::Duration;
use tonic::transport::Channel;

/// One query for [`RouterClient::ask`], built up with optional settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    request: pb::AskRequest,
    timeout: Option<Duration>,
}

impl Ask {
    pub fn new(question: impl Into<String>, context: impl Into<String>) -> Self {
        Self {
            request: pb::AskRequest {
                question: question.into(),
                context: context.into(),
                id: None,
                budget: None,
                language: None,
            },
            timeout: None,
        }
    }

    /// The query's id in a labelled data set (replay experts answer by id).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.request.id = Some(id.into());
        self
    }

    /// The query's language, a BCP 47 tag: experts that declare other languages are not asked.
    pub fn language(mut self, tag: impl Into<String>) -> Self {
        self.request.language = Some(tag.into());
        self
    }

    /// The most this query may cost, in declared cost units.
    pub fn budget(mut self, budget: f64) -> Self {
        self.request.budget = Some(budget);
        self
    }

    /// The call's deadline, propagated by the scheduler to the expert.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The deadline sent with the call, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.timeout
    }
}

/// A cheaply cloneable client of a scheduler's `Router` service.
#[derive(Debug, Clone)]
pub struct RouterClient {
    inner: router_client::RouterClient<Channel>,
    /// `authorization` metadata sent with every call.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl RouterClient {
    /// Connects to `address` (`host:port` or an `http://` URI).
    pub async fn connect(address: &str) -> Result<Self, tonic::transport::Error> {
        Self::connect_with(address, None, None).await
    }

    /// Connects over TLS when `tls` is given, sending `authorization: Bearer TOKEN` with every
    /// call when `token` is (a token that is not visible ASCII is not sent).
    pub async fn connect_with(
        address: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
        token: Option<String>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = crate::grpc::tls::endpoint(address, tls.as_ref())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await?;
        let mut client = Self::from_channel(channel);
        client.token = token.and_then(|t| format!("Bearer {t}").parse().ok());
        Ok(client)
    }

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: router_client::RouterClient::new(channel)
                .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES),
            token: None,
        }
    }

    /// Routes one query and returns the chosen expert's answer with the decision record.
    pub async fn ask(&mut self, ask: Ask) -> Result<pb::AskResponse, tonic::Status> {
        let mut request = tonic::Request::new(ask.request);
        if let Some(timeout) = ask.timeout {
            request.set_timeout(timeout);
        }
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        match self.inner.ask(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(crate::grpc::status::client_deadline(status)),
        }
    }

    /// Reports the outcome of an earlier request (`Router.ReportOutcome`): a reward in [0, 1],
    /// or the gold answers to score the answer given against.
    pub async fn report_outcome(
        &mut self,
        request_id: &str,
        reward: Option<f64>,
        gold_answers: Vec<String>,
    ) -> Result<pb::ReportOutcomeResponse, tonic::Status> {
        let mut request = tonic::Request::new(pb::ReportOutcomeRequest {
            request_id: request_id.to_owned(),
            reward,
            gold_answers,
        });
        request.set_timeout(Duration::from_secs(10));
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        match self.inner.report_outcome(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(crate::grpc::status::client_deadline(status)),
        }
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut router_client::RouterClient<Channel> {
        &mut self.inner
    }
}
