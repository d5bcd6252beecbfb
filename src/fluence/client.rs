//! The typed HTTP client for the Fluence CPU Cloud v3 API: one method per endpoint.
//!
//! The client never retries. `POST /vms/v3` has no idempotency key and each create moves two
//! epochs of rent, so whether to try again is the caller's decision, made with
//! [`FluenceError::is_ambiguous`] and [`FluenceError::is_definite_rejection`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::domain::ids::VmId;
use crate::fluence::error::{ClientConfigError, Endpoint, FluenceError};
use crate::fluence::guard::{GuardConfig, UpstreamGuard};
use crate::fluence::types::{
    AvailableHardware, CreateSshKeyRequest, CreateVmRequest, CreatedVm, DatacenterInfo,
    DefaultImage, DeleteSshKeyRequest, DeleteVmsRequest, DeleteVmsResponse, ErrorBody, Estimate,
    EstimateRequest, MarketOffering, OfferConstraints, OneOrMany, PatchVmsRequest, RunningInstance,
    SshKey, VmStatusInfo,
};
use crate::metrics::{Metrics, UpstreamOutcome};

/// How the key is presented. Current docs use `X-API-KEY`; older docs and every 2025 client use
/// `Authorization: Bearer`, so both are kept behind one switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthScheme {
    #[default]
    XApiKey,
    Bearer,
}

/// What a [`FluenceClient`] needs. `Debug` redacts the key.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://api.fluence.dev` in production; a trailing slash is tolerated.
    pub base_url: String,
    pub api_key: SecretString,
    pub auth: AuthScheme,
    pub connect_timeout: Duration,
    /// For the whole exchange, response body included.
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

    /// A configuration with `X-API-KEY` and the default timeouts.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key: SecretString::from(api_key.into()),
            auth: AuthScheme::default(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The Fluence v3 client. Cheap to clone; clones share the connection pool,
/// [`last_success`](FluenceClient::last_success) and the metrics registry.
#[derive(Clone)]
pub struct FluenceClient {
    inner: Arc<Inner>,
    /// Where every call is counted and timed, by endpoint and outcome; `None` for clients
    /// made outside a gateway (tests, tools), which then count nothing.
    metrics: Option<Arc<Metrics>>,
    /// The bulkhead and circuit breaker every call passes, shared by clones.
    guard: Arc<UpstreamGuard>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash, so that `base_url + path` is the request URL.
    base_url: String,
    auth: AuthScheme,
    /// Kept only to scrub it from error messages Fluence might echo back.
    api_key: SecretString,
    /// Nanoseconds since the Unix epoch of the last successful call; `NEVER` before the first.
    last_success: AtomicI64,
}

const NEVER: i64 = i64::MIN;

/// An error body is only mined for a short message; a proxy's HTML page must not fill memory.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Generous for the largest list (offers); beyond it something is wrong upstream.
const SUCCESS_BODY_LIMIT: usize = 32 * 1024 * 1024;
const MESSAGE_LIMIT: usize = 500;

/// For calls without a request body.
const NO_BODY: Option<&()> = None;

impl fmt::Debug for FluenceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FluenceClient")
            .field("base_url", &self.inner.base_url)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

impl FluenceClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientConfigError> {
        let base_url = validate_base_url(&config.base_url)?;
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(ClientConfigError::Timeout("timeouts must be positive"));
        }
        let key = config.api_key.expose_secret();
        if key.is_empty() {
            return Err(ClientConfigError::ApiKey);
        }
        let (name, value) = match config.auth {
            AuthScheme::XApiKey => (HeaderName::from_static("x-api-key"), key.to_owned()),
            AuthScheme::Bearer => (header::AUTHORIZATION, format!("Bearer {key}")),
        };
        // The error from `from_str` is dropped unread: it is not known to be free of the value.
        let mut value = HeaderValue::from_str(&value).map_err(|_| ClientConfigError::ApiKey)?;
        // Keeps the key out of reqwest's and hyper's `Debug` output and out of HPACK tables.
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(name, value);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("fluence-gateway/", env!("CARGO_PKG_VERSION")))
            // A redirect would replay a POST somewhere we did not choose, with the key attached.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ClientConfigError::Build(e.to_string()))?;
        Ok(FluenceClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                auth: config.auth,
                api_key: config.api_key,
                last_success: AtomicI64::new(NEVER),
            }),
            metrics: None,
            guard: Arc::new(UpstreamGuard::new(GuardConfig::default())),
        })
    }

    /// The same client behind a guard with these limits (a fresh one: call it before cloning).
    pub fn with_guard(mut self, config: GuardConfig) -> Self {
        self.guard = Arc::new(UpstreamGuard::new(config));
        self
    }

    /// The bulkhead and breaker, for readiness and metrics.
    pub fn guard(&self) -> &UpstreamGuard {
        &self.guard
    }

    /// The same client, counting every call in `metrics` (`gateway_upstream_*`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The base URL in use, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// When a call (to any endpoint) last succeeded, for readiness checks. A call that got a
    /// 4xx does not count: it proves Fluence is up, not that the gateway can use it.
    pub fn last_success(&self) -> Option<DateTime<Utc>> {
        match self.inner.last_success.load(Ordering::Relaxed) {
            NEVER => None,
            nanos => Some(DateTime::from_timestamp_nanos(nanos)),
        }
    }

    /// `POST /marketplace/offers`; `[]` when nothing matches.
    pub async fn offers(
        &self,
        constraints: &OfferConstraints,
    ) -> Result<Vec<MarketOffering>, FluenceError> {
        self.send(Endpoint::Offers, None, Some(constraints), json)
            .await
    }

    /// `GET /marketplace/basic_configurations`: configuration slugs.
    pub async fn basic_configurations(&self) -> Result<Vec<String>, FluenceError> {
        self.send(Endpoint::BasicConfigurations, None, NO_BODY, json)
            .await
    }

    /// `GET /marketplace/countries`: ISO alpha-2 codes.
    pub async fn countries(&self) -> Result<Vec<String>, FluenceError> {
        self.send(Endpoint::Countries, None, NO_BODY, json).await
    }

    /// `GET /marketplace/hardware`.
    pub async fn hardware(&self) -> Result<AvailableHardware, FluenceError> {
        self.send(Endpoint::Hardware, None, NO_BODY, json).await
    }

    /// `GET /v1/marketplace/datacenters`.
    pub async fn datacenters(&self) -> Result<Vec<DatacenterInfo>, FluenceError> {
        self.send(Endpoint::Datacenters, None, NO_BODY, json).await
    }

    /// `GET /vms/v3/default_images`.
    pub async fn default_images(&self) -> Result<Vec<DefaultImage>, FluenceError> {
        self.send(Endpoint::DefaultImages, None, NO_BODY, json)
            .await
    }

    /// `POST /vms/v3/estimate`. Not a reservation: capacity can vanish before a deploy.
    pub async fn estimate(&self, request: &EstimateRequest) -> Result<Estimate, FluenceError> {
        self.send(Endpoint::Estimate, None, Some(request), json)
            .await
    }

    /// `POST /vms/v3`: one element per VM created. Fluence answers 201, but any 2xx is accepted,
    /// and so is a single object in place of the array (seen by one client).
    ///
    /// Never retry this after an [ambiguous](FluenceError::is_ambiguous) error: the VMs may exist
    /// and be paid for. Reconcile against [`list_vms`](Self::list_vms) instead.
    pub async fn deploy(&self, request: &CreateVmRequest) -> Result<Vec<CreatedVm>, FluenceError> {
        self.send(Endpoint::Deploy, None, Some(request), |_, body| {
            serde_json::from_slice::<OneOrMany<CreatedVm>>(body)
                .map(|created| created.0)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// `GET /vms/v3`: every VM of the account, provider-terminated ones included.
    ///
    /// The answer is decoded while it arrives and never held whole: with 10 000 VMs it is a
    /// 10 MB body, which read first took as much memory again as the VMs decoded from it.
    pub async fn list_vms(&self) -> Result<Vec<RunningInstance>, FluenceError> {
        let endpoint = Endpoint::ListVms;
        self.exchange(endpoint, None, NO_BODY, |status, response| {
            json_streamed(endpoint, status, response)
        })
        .await
    }

    /// `GET /vms/v3/status?ids=a,b`. Unknown ids may simply be missing from the answer. No call
    /// is made for an empty list, whose upstream behaviour is undocumented.
    pub async fn vm_statuses(&self, ids: &[VmId]) -> Result<Vec<VmStatusInfo>, FluenceError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let joined = ids
            .iter()
            .map(|id| percent_encode(id.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        self.send(
            Endpoint::VmStatuses,
            Some(format!("ids={joined}")),
            NO_BODY,
            json,
        )
        .await
    }

    /// `PATCH /vms/v3`. Fluence answers 204; any body is ignored. `openPorts` replaces the
    /// whole set, so callers send the full list (22/tcp included).
    pub async fn patch_vms(&self, request: &PatchVmsRequest) -> Result<(), FluenceError> {
        self.send(Endpoint::PatchVms, None, Some(request), |_, _| Ok(()))
            .await
    }

    /// `DELETE /vms/v3` with a JSON body. The response body is undocumented, so an empty or
    /// unexpected 2xx body yields an empty [`DeleteVmsResponse`]: the deletion itself succeeded.
    pub async fn delete_vms(&self, ids: &[VmId]) -> Result<DeleteVmsResponse, FluenceError> {
        let request = DeleteVmsRequest {
            vm_ids: ids.to_vec(),
        };
        self.send(Endpoint::DeleteVms, None, Some(&request), |_, body| {
            Ok(serde_json::from_slice(body).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "delete response body not decoded; using an empty one");
                DeleteVmsResponse::default()
            }))
        })
        .await
    }

    /// `GET /ssh_keys`.
    pub async fn ssh_keys(&self) -> Result<Vec<SshKey>, FluenceError> {
        self.send(Endpoint::ListSshKeys, None, NO_BODY, json).await
    }

    /// `POST /ssh_keys`: the key and whether it was created (201) rather than already registered
    /// under the same fingerprint (200, with the original name kept). The answer may be an object
    /// or a one-element array, with `publicKey` or `public_key`.
    pub async fn create_ssh_key(
        &self,
        request: &CreateSshKeyRequest,
    ) -> Result<(SshKey, bool), FluenceError> {
        self.send(
            Endpoint::CreateSshKey,
            None,
            Some(request),
            |status, body| {
                let keys =
                    serde_json::from_slice::<OneOrMany<SshKey>>(body).map_err(|e| e.to_string())?;
                let key = keys.0.into_iter().next().ok_or("an empty array")?;
                Ok((key, status == 201))
            },
        )
        .await
    }

    /// `DELETE /ssh_keys` with a JSON body: keys are identified by fingerprint, not name.
    pub async fn delete_ssh_key(&self, fingerprint: &str) -> Result<(), FluenceError> {
        let request = DeleteSshKeyRequest {
            fingerprint: fingerprint.to_owned(),
        };
        self.send(Endpoint::DeleteSshKey, None, Some(&request), |_, _| Ok(()))
            .await
    }

    /// A call whose 2xx body is read whole, then decoded with `decode` (given the status and
    /// the body).
    async fn send<B, T>(
        &self,
        endpoint: Endpoint,
        query: Option<String>,
        body: Option<&B>,
        decode: impl FnOnce(u16, &[u8]) -> Result<T, String>,
    ) -> Result<T, FluenceError>
    where
        B: Serialize + ?Sized,
    {
        self.exchange(endpoint, query, body, |status, response| async move {
            let body = read_body(response, SUCCESS_BODY_LIMIT)
                .await
                .map_err(|e| match e {
                    BodyError::Transport(e) => transport(endpoint, &e),
                    BodyError::TooLarge => too_large(endpoint, status),
                })?;
            decode(status, &body).map_err(|detail| FluenceError::Decode {
                endpoint,
                status,
                detail,
            })
        })
        .await
    }

    /// The one path every call takes: build, send, classify the status, and hand a 2xx answer
    /// to `read` (given the status and the response, its body unread).
    async fn exchange<B, T, F>(
        &self,
        endpoint: Endpoint,
        query: Option<String>,
        body: Option<&B>,
        read: impl FnOnce(u16, reqwest::Response) -> F,
    ) -> Result<T, FluenceError>
    where
        B: Serialize + ?Sized,
        F: Future<Output = Result<T, FluenceError>>,
    {
        let span = tracing::info_span!(
            "fluence",
            endpoint = %endpoint,
            status = tracing::field::Empty,
        );
        // Started before the span is entered and finished after it, so the recorded duration
        // covers the whole exchange; a caller dropping this future (a timeout around it)
        // records the call as cancelled.
        let call = self.metrics.as_deref().map(|m| m.start_upstream(endpoint));
        let pass = match self.guard.enter(endpoint) {
            Ok(pass) => pass,
            Err(held_back) => {
                tracing::debug!(error = %held_back, "call to Fluence held back");
                let result = Err(held_back);
                if let Some(call) = call {
                    call.finish(UpstreamOutcome::of(&result));
                }
                return result;
            }
        };
        let result = async move {
            let mut url = format!("{}{}", self.inner.base_url, endpoint.path());
            if let Some(query) = query {
                url.push('?');
                url.push_str(&query);
            }
            let mut request = self.inner.http.request(endpoint.method(), url);
            if let Some(body) = body {
                // Sets `Content-Type: application/json` too, DELETE included.
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| transport(endpoint, &e))?;
            let status = response.status().as_u16();
            tracing::Span::current().record("status", status);

            if !response.status().is_success() {
                let body = read_body(response, ERROR_BODY_LIMIT)
                    .await
                    .unwrap_or_default();
                let error = FluenceError::Status {
                    endpoint,
                    status,
                    message: self.error_message(&body),
                };
                tracing::debug!(error = %error, "Fluence refused the call");
                return Err(error);
            }
            let value = read(status, response).await?;
            self.record_success();
            Ok(value)
        }
        .instrument(span)
        .await;
        pass.finish(&result);
        if let Some(call) = call {
            call.finish(UpstreamOutcome::of(&result));
        }
        result
    }

    /// Fluence's `{"error": "..."}` message, truncated and with the key scrubbed in case an
    /// upstream echoes what it was sent.
    fn error_message(&self, body: &[u8]) -> Option<String> {
        let message = serde_json::from_slice::<ErrorBody>(body).ok()?.error;
        let key = self.inner.api_key.expose_secret();
        let message = message.replace(key, "[redacted]");
        Some(match message.char_indices().nth(MESSAGE_LIMIT) {
            Some((cut, _)) => format!("{}…", &message[..cut]),
            None => message,
        })
    }

    fn record_success(&self) {
        if let Some(nanos) = Utc::now().timestamp_nanos_opt() {
            // `fetch_max`: calls finishing out of order never move the time backwards.
            self.inner.last_success.fetch_max(nanos, Ordering::Relaxed);
        }
    }
}

fn json<T: DeserializeOwned>(_status: u16, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Classifies a reqwest failure. Only a failure to connect (TCP or TLS, connect timeout included)
/// or to build the request proves that no byte of the request reached Fluence; everything else,
/// a request timeout above all, may have been acted on.
fn transport(endpoint: Endpoint, error: &reqwest::Error) -> FluenceError {
    let may_have_been_sent = !(error.is_connect() || error.is_builder());
    FluenceError::Transport {
        endpoint,
        may_have_been_sent,
        detail: error_chain(error),
    }
}

/// reqwest's top-level message is generic ("error sending request"); the cause is in the chain.
/// The URL is left out: it is the endpoint's, which the error already names.
fn error_chain(error: &reqwest::Error) -> String {
    let mut detail = String::from(if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    });
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

fn too_large(endpoint: Endpoint, status: u16) -> FluenceError {
    FluenceError::Decode {
        endpoint,
        status,
        detail: format!("body larger than {SUCCESS_BODY_LIMIT} bytes"),
    }
}

/// Decodes a JSON body while it arrives: a blocking thread parses it from the chunks this
/// task reads, at most a few chunks ahead, so neither side holds the whole body.
async fn json_streamed<T>(
    endpoint: Endpoint,
    status: u16,
    mut response: reqwest::Response,
) -> Result<T, FluenceError>
where
    T: DeserializeOwned + Send + 'static,
{
    let (chunks, receiver) = tokio::sync::mpsc::channel(4);
    let decoding = tokio::task::spawn_blocking(move || {
        serde_json::from_reader::<_, T>(std::io::BufReader::new(ChunkReader {
            chunks: receiver,
            current: Bytes::new(),
        }))
    });
    let mut received = 0;
    let mut failed = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len();
                if received > SUCCESS_BODY_LIMIT {
                    failed = Some(too_large(endpoint, status));
                    break;
                }
                // The decoder stopped early (the body is not what was expected): its error
                // says why.
                if chunks.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(error) => {
                failed = Some(transport(endpoint, &error));
                break;
            }
        }
    }
    // Ends the decoder's input: a body cut short is an error of its own there.
    drop(chunks);
    let decoded = decoding.await;
    if let Some(error) = failed {
        return Err(error);
    }
    let detail = match decoded {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => error.to_string(),
        Err(error) => format!("the decoder stopped: {error}"),
    };
    Err(FluenceError::Decode {
        endpoint,
        status,
        detail,
    })
}

/// A body as a blocking reader over the chunks another task receives.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                // The sender is gone: the body ended, or reading it failed (the sender knows
                // which, and says so over the decoder's error).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    // Sized once when the length is announced: grown by doubling, a 10 MB listing took 16 MB.
    let announced = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= limit);
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Fluence expects literal commas between ids, so each id is escaped on its own (ids are hex,
/// but nothing here should let an odd one add a query parameter).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Checks a base URL (http or https, a host, no credentials, query or fragment) and returns it
/// without a trailing slash. Configuration validation uses it too, so both agree.
pub fn validate_base_url(raw: &str) -> Result<String, ClientConfigError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url =
        reqwest::Url::parse(trimmed).map_err(|e| ClientConfigError::BaseUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ClientConfigError::BaseUrl(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    // Credentials in the URL would end up in logs; the key goes in a header instead.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ClientConfigError::BaseUrl(
            "user information is not allowed".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ClientConfigError::BaseUrl(
            "a query or fragment is not allowed".into(),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ClientConfigError::BaseUrl("a host is required".into()));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_trailing_slashes_dropped() {
        assert_eq!(
            validate_base_url("https://api.fluence.dev/").as_deref(),
            Ok("https://api.fluence.dev")
        );
        assert_eq!(
            validate_base_url("http://127.0.0.1:8080/prefix").as_deref(),
            Ok("http://127.0.0.1:8080/prefix")
        );
        for bad in [
            "ftp://api.fluence.dev",
            "https://user:pw@api.fluence.dev",
            "https://api.fluence.dev?key=x",
            "https://api.fluence.dev#x",
            "not a url",
            "",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_escaped_one_by_one() {
        assert_eq!(percent_encode("0xAbC"), "0xAbC");
        assert_eq!(percent_encode("a&b=c,d"), "a%26b%3Dc%2Cd");
    }
}
