//! The client: signed `upload` and `destroy` calls of Cloudinary's Upload
//! API (`POST <base>/<cloud_name>/image/upload` as multipart/form-data,
//! `POST <base>/<cloud_name>/image/destroy` as a urlencoded form), and the
//! sorting of its answers into results and [`ImageStoreError`]s.
//!
//! Errors come back as `{"error":{"message":"..."}}` with an HTTP status;
//! 429 and 5xx (and no answer at all) are worth retrying, every other 4xx is
//! a refusal that retrying unchanged would only repeat. Cloudinary also puts
//! the message in an `X-Cld-Error` header
//! (<https://cloudinary.com/documentation/ts_troubleshooting_failed_upload_requests>),
//! used when the body has none.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;

use super::signature::sign;

/// Cloudinary's API root; the cloud name and the action follow it.
pub use dkl_shared::config::DEFAULT_CLOUDINARY_BASE_URL as DEFAULT_BASE_URL;

/// The environment variable the error messages point at.
const URL_VARIABLE: &str = "DKL_CLOUDINARY_URL";

/// The shape of `CLOUDINARY_URL`, named in errors instead of the input
/// (which holds the secret).
const URL_SHAPE: &str = "cloudinary://<api_key>:<api_secret>@<cloud_name>";

/// How much of an unexpected body an error message quotes.
const EXCERPT_CHARS: usize = 300;

/// An account's API credentials.
#[derive(Clone)]
pub struct Credentials {
    pub cloud_name: String,
    pub api_key: String,
    pub api_secret: String,
}

impl fmt::Debug for Credentials {
    // Debug output ends up in logs and panics: never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("cloud_name", &self.cloud_name)
            .field("api_key", &self.api_key)
            .field("api_secret", &"***")
            .finish()
    }
}

impl Credentials {
    /// Reads Cloudinary's `CLOUDINARY_URL` format,
    /// `cloudinary://<api_key>:<api_secret>@<cloud_name>`. Anything after
    /// the cloud name (`?secure=true`, a path) is ignored. Errors name the
    /// part that is wrong, never the input.
    pub fn from_cloudinary_url(url: &str) -> Result<Self, ImageStoreError> {
        let rest = url
            .trim()
            .strip_prefix("cloudinary://")
            .ok_or_else(|| url_error("it does not start with cloudinary://"))?;
        // The secret never holds an '@'; the cloud name follows the last one.
        let (user_info, host) = rest
            .rsplit_once('@')
            .ok_or_else(|| url_error("it has no '@' before the cloud name"))?;
        let (api_key, api_secret) = user_info
            .split_once(':')
            .ok_or_else(|| url_error("it has no ':' between the API key and the API secret"))?;
        let cloud_name = host.split(['/', '?', '#']).next().unwrap_or_default();
        let credentials = Credentials {
            cloud_name: cloud_name.to_string(),
            api_key: api_key.to_string(),
            api_secret: api_secret.to_string(),
        };
        credentials.check()?;
        Ok(credentials)
    }

    fn check(&self) -> Result<(), ImageStoreError> {
        if self.api_key.is_empty() {
            return Err(url_error("the API key is empty"));
        }
        if self.api_secret.is_empty() {
            return Err(url_error("the API secret is empty"));
        }
        // The cloud name becomes a path segment of every request.
        let name_ok = !self.cloud_name.is_empty()
            && self
                .cloud_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(url_error(
                "the cloud name is empty or has characters other than letters, digits, '-' and '_'",
            ));
        }
        Ok(())
    }
}

fn url_error(what: &str) -> ImageStoreError {
    ImageStoreError::Config(format!(
        "{URL_VARIABLE} is not a Cloudinary URL: {what}; expected {URL_SHAPE}"
    ))
}

/// Which call an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Upload,
    Destroy,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Upload => "upload",
            Operation::Destroy => "deletion",
        })
    }
}

/// What went wrong talking to the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// 429 or 5xx, or no answer (connection refused, timeout): worth
    /// retrying, after `retry_after` when the service said so.
    #[error(
        "the Cloudinary {operation} failed for now ({}): {message}; {}",
        status_text(*.status),
        retry_hint(*.retry_after)
    )]
    Transient {
        operation: Operation,
        /// None when no HTTP answer came.
        status: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx (400, 401, 403, 404, 420...): the same request would be
    /// refused again.
    #[error(
        "Cloudinary refused the {operation} ({status}): {message}; {}",
        rejected_hint(*.status)
    )]
    Rejected {
        operation: Operation,
        status: u16,
        message: String,
    },
    /// A 2xx whose body is not what Cloudinary documents.
    #[error(
        "Cloudinary's answer to the {operation} is not what its documentation describes: \
         {message}; check that the base URL points at a Cloudinary-compatible service"
    )]
    BadResponse {
        operation: Operation,
        message: String,
    },
    /// Bad configuration (credentials URL, base URL).
    #[error("image store configuration: {0}")]
    Config(String),
}

impl ImageStoreError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, ImageStoreError::Transient { .. })
    }

    /// How long the service asked us to wait (`Retry-After`, in seconds).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ImageStoreError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn status_text(status: Option<u16>) -> String {
    match status {
        Some(code) => format!("HTTP {code}"),
        None => "no answer".to_string(),
    }
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("retry after {} s", wait.as_secs()),
        None => "retry later".to_string(),
    }
}

fn rejected_hint(status: u16) -> String {
    match status {
        401 => format!("check {URL_VARIABLE} (API key and secret) and this machine's clock"),
        403 => format!("check {URL_VARIABLE}: the API key may be disabled or lack the permission"),
        404 => format!("check the cloud name in {URL_VARIABLE} and the base URL"),
        420 => {
            "the account's usage or rate limit is reached; wait for it to reset or raise the plan"
                .to_string()
        }
        _ => "the request itself needs fixing; sent again unchanged it fails again".to_string(),
    }
}

/// One image to upload.
pub struct UploadRequest<'a> {
    pub bytes: &'a [u8],
    /// Sent as the file part's name (Cloudinary keeps it as
    /// `original_filename`).
    pub file_name: &'a str,
    /// A MIME type such as `image/png`.
    pub content_type: &'a str,
    /// When given, an image already stored under it is replaced.
    pub public_id: Option<&'a str>,
    pub folder: Option<&'a str>,
}

/// What Cloudinary says about a stored image (the fields we use of its
/// upload answer; the others are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(from = "UploadAnswer")]
pub struct UploadedImage {
    pub public_id: String,
    pub url: String,
    pub secure_url: Option<String>,
    pub format: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub bytes: Option<i64>,
    /// `folder` (fixed folder mode) or `asset_folder` (dynamic folder
    /// mode); None when the image sits at the root.
    pub folder: Option<String>,
    pub version: Option<i64>,
}

/// The answer as sent: accounts in dynamic folder mode say `asset_folder`,
/// older ones `folder`, and an answer may carry both.
#[derive(Deserialize)]
struct UploadAnswer {
    public_id: String,
    url: String,
    secure_url: Option<String>,
    format: Option<String>,
    width: Option<i32>,
    height: Option<i32>,
    bytes: Option<i64>,
    folder: Option<String>,
    asset_folder: Option<String>,
    version: Option<i64>,
}

impl From<UploadAnswer> for UploadedImage {
    fn from(a: UploadAnswer) -> Self {
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        UploadedImage {
            public_id: a.public_id,
            url: a.url,
            secure_url: a.secure_url,
            format: a.format,
            width: a.width,
            height: a.height,
            bytes: a.bytes,
            folder: non_empty(a.folder).or_else(|| non_empty(a.asset_folder)),
            version: a.version,
        }
    }
}

/// What a destroy call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    Removed,
    /// Nothing was stored under that public_id: it is gone all the same.
    NotFound,
}

#[derive(Deserialize)]
struct DestroyAnswer {
    result: String,
}

/// A client of one Cloudinary account (or of any service that speaks its
/// Upload API).
pub struct ImageStore {
    client: reqwest::Client,
    base_url: String,
    credentials: Credentials,
    clock: fn() -> i64,
    invalidate: bool,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore")
            .field("base_url", &self.base_url)
            .field("credentials", &self.credentials)
            .field("invalidate", &self.invalidate)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl ImageStore {
    /// `base_url` is the API root, e.g. [`DEFAULT_BASE_URL`]; `timeout`
    /// bounds each whole request.
    pub fn new(
        base_url: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, ImageStoreError> {
        let base_url = check_base_url(base_url)?;
        credentials.check()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ImageStoreError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(ImageStore {
            client,
            base_url,
            credentials,
            clock: unix_now,
            invalidate: false,
        })
    }

    /// Replaces the clock that gives the signed `timestamp` (unix seconds),
    /// so that tests can know the exact signature.
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    /// Whether a destroy also asks the CDN to drop its cached copies
    /// (`invalidate=true`; Cloudinary's default is not to, and the cached
    /// copies then live on until they expire).
    pub fn with_invalidate(mut self, invalidate: bool) -> Self {
        self.invalidate = invalidate;
        self
    }

    /// Signed upload of bytes (multipart/form-data).
    pub async fn upload(&self, req: &UploadRequest<'_>) -> Result<UploadedImage, ImageStoreError> {
        let timestamp = (self.clock)().to_string();
        let public_id = req.public_id.filter(|p| !p.is_empty());
        let mut signed = vec![("timestamp", timestamp.as_str())];
        if let Some(public_id) = public_id {
            // A job that uploads again under the same id means to replace.
            signed.push(("public_id", public_id));
            signed.push(("overwrite", "true"));
        }
        if let Some(folder) = req.folder.filter(|f| !f.is_empty()) {
            signed.push(("folder", folder));
        }
        let form = self.signed_form(&signed, file_part(req)?);
        let request = self.client.post(self.endpoint("upload")).multipart(form);
        let body = self
            .send(Operation::Upload, public_id.unwrap_or("(new)"), request)
            .await?;
        serde_json::from_str(&body).map_err(|e| bad_response(Operation::Upload, &e, &body))
    }

    /// Signed destroy of `public_id` (urlencoded form). An image that was
    /// not there counts as gone: [`Destroyed::NotFound`].
    pub async fn destroy(&self, public_id: &str) -> Result<Destroyed, ImageStoreError> {
        let timestamp = (self.clock)().to_string();
        let mut params = vec![("public_id", public_id), ("timestamp", timestamp.as_str())];
        if self.invalidate {
            params.push(("invalidate", "true"));
        }
        let signature = sign(&params, &self.credentials.api_secret);
        params.push(("api_key", &self.credentials.api_key));
        params.push(("signature", &signature));
        let request = self.client.post(self.endpoint("destroy")).form(&params);
        let body = self.send(Operation::Destroy, public_id, request).await?;
        let answer: DestroyAnswer =
            serde_json::from_str(&body).map_err(|e| bad_response(Operation::Destroy, &e, &body))?;
        match answer.result.as_str() {
            "ok" => Ok(Destroyed::Removed),
            "not found" => Ok(Destroyed::NotFound),
            other => Err(ImageStoreError::BadResponse {
                operation: Operation::Destroy,
                message: format!("result {other:?}, expected \"ok\" or \"not found\""),
            }),
        }
    }

    fn endpoint(&self, action: &str) -> String {
        format!(
            "{}/{}/image/{action}",
            self.base_url, self.credentials.cloud_name
        )
    }

    fn signed_form(&self, signed: &[(&str, &str)], file: Part) -> Form {
        let signature = sign(signed, &self.credentials.api_secret);
        let mut form = Form::new()
            .part("file", file)
            .text("api_key", self.credentials.api_key.clone())
            .text("signature", signature);
        for (name, value) in signed {
            form = form.text(name.to_string(), value.to_string());
        }
        form
    }

    /// Sends, and returns the body of a 2xx answer.
    async fn send(
        &self,
        operation: Operation,
        public_id: &str,
        request: RequestBuilder,
    ) -> Result<String, ImageStoreError> {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(operation, &e))?;
        let status = response.status();
        tracing::debug!(%operation, public_id, status = status.as_u16(), "Cloudinary answered");
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| transport_error(operation, &e))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(refusal(operation, status, &headers, &body))
        }
    }
}

fn check_base_url(base_url: &str) -> Result<String, ImageStoreError> {
    let trimmed = base_url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| {
        ImageStoreError::Config(format!(
            "the image store base URL {trimmed:?} is not a URL ({e}); expected e.g. {DEFAULT_BASE_URL}"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
        return Err(ImageStoreError::Config(format!(
            "the image store base URL {trimmed:?} must be http(s) without a query; expected e.g. {DEFAULT_BASE_URL}"
        )));
    }
    Ok(trimmed.to_string())
}

fn file_part(req: &UploadRequest<'_>) -> Result<Part, ImageStoreError> {
    Part::bytes(req.bytes.to_vec())
        .file_name(req.file_name.to_string())
        .mime_str(req.content_type)
        .map_err(|_| {
            ImageStoreError::Config(format!(
                "{:?} is not a MIME type; give the upload a content type such as image/png",
                req.content_type
            ))
        })
}

/// No HTTP answer (refused, reset, timed out) is worth retrying; a request
/// that could not even be built is not.
fn transport_error(operation: Operation, error: &reqwest::Error) -> ImageStoreError {
    if error.is_builder() {
        return ImageStoreError::Config(format!("cannot build the {operation} request: {error}"));
    }
    ImageStoreError::Transient {
        operation,
        status: None,
        message: error_chain(error),
        retry_after: None,
    }
}

/// reqwest's own message says little ("error sending request"); the cause
/// ("Connection refused", "operation timed out") is in its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn refusal(
    operation: Operation,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> ImageStoreError {
    let message = provider_message(status, headers, body);
    let code = status.as_u16();
    if code == 429 || status.is_server_error() {
        ImageStoreError::Transient {
            operation,
            status: Some(code),
            message,
            retry_after: retry_after(headers),
        }
    } else {
        ImageStoreError::Rejected {
            operation,
            status: code,
            message,
        }
    }
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

/// `{"error":{"message":...}}`, else the `X-Cld-Error` header, else the
/// start of the body, else the status's reason phrase.
fn provider_message(status: StatusCode, headers: &HeaderMap, body: &str) -> String {
    if let Ok(answer) = serde_json::from_str::<ErrorAnswer>(body) {
        return answer.error.message;
    }
    if let Some(header) = headers.get("x-cld-error").and_then(|v| v.to_str().ok()) {
        return header.to_string();
    }
    let excerpt = excerpt(body);
    if !excerpt.is_empty() {
        return excerpt;
    }
    status
        .canonical_reason()
        .unwrap_or("no message")
        .to_string()
}

/// The trimmed body, cut to [`EXCERPT_CHARS`] characters.
fn excerpt(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_string(),
    }
}

/// Only the delta-seconds form; an HTTP date is rare enough here to be
/// treated as no advice.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn bad_response(operation: Operation, error: &serde_json::Error, body: &str) -> ImageStoreError {
    ImageStoreError::BadResponse {
        operation,
        message: format!("{error} in {:?}", excerpt(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn excerpt_cuts_long_bodies_on_a_char_boundary() {
        let body = format!("  {}  ", "é".repeat(400));
        let cut = excerpt(&body);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(" short\n"), "short");
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 12 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn message_prefers_json_then_header_then_body() {
        let mut headers = HeaderMap::new();
        let json = r#"{"error":{"message":"Invalid Signature"}}"#;
        let status = StatusCode::UNAUTHORIZED;
        assert_eq!(
            provider_message(status, &headers, json),
            "Invalid Signature"
        );
        headers.insert("x-cld-error", HeaderValue::from_static("Invalid api_key"));
        assert_eq!(
            provider_message(status, &headers, "<html>"),
            "Invalid api_key"
        );
        headers.clear();
        assert_eq!(provider_message(status, &headers, " <html> "), "<html>");
        assert_eq!(provider_message(status, &headers, ""), "Unauthorized");
    }

    #[test]
    fn base_url_must_be_http() {
        assert_eq!(
            check_base_url("https://api.cloudinary.com/v1_1/")
                .ok()
                .as_deref(),
            Some(DEFAULT_BASE_URL)
        );
        assert!(check_base_url("ftp://example.com").is_err());
        assert!(check_base_url("api.cloudinary.com").is_err());
    }

    #[test]
    fn asset_folder_stands_in_for_folder() {
        let json = r#"{"public_id":"p","url":"u","folder":"","asset_folder":"dkl"}"#;
        let image: UploadedImage = serde_json::from_str(json).unwrap();
        assert_eq!(image.folder.as_deref(), Some("dkl"));
    }
}
