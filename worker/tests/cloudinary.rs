//! The image store client against a stand-in Cloudinary (wiremock): each
//! request is taken apart as Cloudinary's Upload API reference describes it
//! (path, content type, fields, and a signature recomputed here, apart from
//! the library), and answered with the JSON that Cloudinary documents.
//! No database, no network beyond loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dkl_worker::images::{
    Credentials, Destroyed, ImageStore, ImageStoreError, UploadRequest, UploadedImage, sign,
    string_to_sign,
};
use sha1::{Digest, Sha1};
use wiremock::matchers::{method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const CLOUD: &str = "dkl-test";
const API_KEY: &str = "614335564976464";
const API_SECRET: &str = "s3cr3t-Xy_9";
const NOW: i64 = 1_700_000_000;

/// Parameters that Cloudinary sends but does not sign
/// (https://cloudinary.com/documentation/authentication_signatures).
const NOT_SIGNED: &[&str] = &[
    "file",
    "cloud_name",
    "resource_type",
    "api_key",
    "signature",
];

fn credentials() -> Credentials {
    Credentials {
        cloud_name: CLOUD.to_string(),
        api_key: API_KEY.to_string(),
        api_secret: API_SECRET.to_string(),
    }
}

fn fixed_clock() -> i64 {
    NOW
}

fn store(server: &MockServer) -> ImageStore {
    ImageStore::new(
        &format!("{}/v1_1", server.uri()),
        credentials(),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_clock(fixed_clock)
}

/// The signature as Cloudinary's documentation spells it out, written here
/// again so that the library is not checked against itself.
fn expected_signature(fields: &[(String, String)], secret: &str) -> String {
    let mut signed: Vec<String> = fields
        .iter()
        .filter(|(name, value)| !value.is_empty() && !NOT_SIGNED.contains(&name.as_str()))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    signed.sort();
    let digest = Sha1::digest(format!("{}{secret}", signed.join("&")).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// 1. The signature of Cloudinary's worked example.

#[test]
fn signature_matches_cloudinarys_published_example() {
    // https://cloudinary.com/documentation/authentication_signatures:
    // API secret "abcd", API key "1234", these three parameters.
    let params = [
        ("timestamp", "1315060510"),
        ("public_id", "sample_image"),
        ("eager", "w_400,h_300,c_pad|w_260,h_200,c_crop"),
        ("api_key", "1234"),
        ("file", "https://www.example.com/sample.jpg"),
    ];
    assert_eq!(
        string_to_sign(&params),
        "eager=w_400,h_300,c_pad|w_260,h_200,c_crop&public_id=sample_image&timestamp=1315060510"
    );
    assert_eq!(
        sign(&params, "abcd"),
        "bfd09f95f331f558cbd1320e67aa8d488770583e"
    );
}

// ---------------------------------------------------------------------------
// 2. Upload.

/// One part of a multipart/form-data body.
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `name="value"` out of a Content-Disposition header.
fn disposition_param(header: &str, param: &str) -> Option<String> {
    let key = format!("{param}=\"");
    let start = header.find(&key)? + key.len();
    let end = header[start..].find('"')? + start;
    Some(header[start..end].to_string())
}

/// A small RFC 7578 reader: enough to see what the client sent.
fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<FormPart>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .ok_or("no boundary in the content type")?
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let mut rest = &body[find(body, &delimiter).ok_or("no first boundary")? + delimiter.len()..];
    let mut parts = Vec::new();
    while !rest.starts_with(b"--") {
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("no CRLF after a boundary")?;
        let end = find(rest, &delimiter).ok_or("a part without a closing boundary")?;
        let raw = rest[..end]
            .strip_suffix(b"\r\n")
            .ok_or("a part not ended by CRLF")?;
        parts.push(parse_part(raw)?);
        rest = &rest[end + delimiter.len()..];
    }
    Ok(parts)
}

fn parse_part(raw: &[u8]) -> Result<FormPart, String> {
    let split = find(raw, b"\r\n\r\n").ok_or("a part without a blank line")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let header = |name: &str| {
        head.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let disposition = header("content-disposition").ok_or("a part without Content-Disposition")?;
    Ok(FormPart {
        name: disposition_param(&disposition, "name").ok_or("a part without a name")?,
        file_name: disposition_param(&disposition, "filename"),
        content_type: header("content-type"),
        body: raw[split + 4..].to_vec(),
    })
}

/// Checks an upload request as Cloudinary would; what is wrong is kept in
/// `problems` so that a failing test says why the mock did not match.
struct UploadMatch {
    file: Vec<u8>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl UploadMatch {
    fn check(&self, request: &Request) -> Result<(), String> {
        let content_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .ok_or("no content type")?;
        if !content_type.starts_with("multipart/form-data") {
            return Err(format!("content type {content_type}"));
        }
        let parts = parse_multipart(content_type, &request.body)?;
        let file = parts
            .iter()
            .find(|p| p.name == "file")
            .ok_or("no file part")?;
        if file.body != self.file {
            return Err(format!("file part of {} bytes differs", file.body.len()));
        }
        if file.file_name.as_deref() != Some("route.png")
            || file.content_type.as_deref() != Some("image/png")
        {
            return Err(format!(
                "file part named {:?}, typed {:?}",
                file.file_name, file.content_type
            ));
        }
        let fields: Vec<(String, String)> = parts
            .iter()
            .filter(|p| p.name != "file")
            .map(|p| {
                (
                    p.name.clone(),
                    String::from_utf8_lossy(&p.body).into_owned(),
                )
            })
            .collect();
        check_signed_fields(&fields)
    }
}

/// api_key, timestamp and signature present, and the signature right.
fn check_signed_fields(fields: &[(String, String)]) -> Result<(), String> {
    if field(fields, "api_key") != Some(API_KEY) {
        return Err(format!("api_key {:?}", field(fields, "api_key")));
    }
    if field(fields, "timestamp") != Some(&NOW.to_string()) {
        return Err(format!("timestamp {:?}", field(fields, "timestamp")));
    }
    let sent = field(fields, "signature").ok_or("no signature")?;
    let expected = expected_signature(fields, API_SECRET);
    if sent != expected {
        return Err(format!("signature {sent}, expected {expected}"));
    }
    if fields.iter().any(|(_, v)| v.contains(API_SECRET)) {
        return Err("the API secret was sent".to_string());
    }
    Ok(())
}

impl Match for UploadMatch {
    fn matches(&self, request: &Request) -> bool {
        let verdict = self.check(request);
        if let Err(problem) = &verdict {
            self.problems.lock().unwrap().push(problem.clone());
        }
        verdict.is_ok()
    }
}

/// Cloudinary's sample upload answer (Upload API reference), for the
/// public_id and folder asked for here.
fn upload_answer() -> serde_json::Value {
    serde_json::json!({
        "asset_id": "b5e6d2b39ba3e0869d67141ba7dba6cf",
        "public_id": "dkl/route-2025",
        "version": 1700000001,
        "version_id": "98f52566f43d8e516a486958a45c1eb9",
        "signature": "abcdefghijklmnopqrstuvwxyz12345",
        "width": 1000,
        "height": 672,
        "format": "png",
        "resource_type": "image",
        "created_at": "2023-11-14T22:13:21Z",
        "tags": [],
        "pages": 1,
        "bytes": 350749,
        "type": "upload",
        "etag": "5297bd123ad4ddad723483c176e35f6e",
        "placeholder": false,
        "url": "http://res.cloudinary.com/dkl-test/image/upload/v1700000001/dkl/route-2025.png",
        "secure_url": "https://res.cloudinary.com/dkl-test/image/upload/v1700000001/dkl/route-2025.png",
        "folder": "dkl",
        "access_mode": "public",
        "overwritten": true,
        "original_filename": "route",
        "api_key": API_KEY
    })
}

/// A PNG signature and some bytes that a text-minded parser would mangle
/// (CRLF, NUL, a would-be boundary dash pair, invalid UTF-8).
fn png_bytes() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR--\r\n\xff\xfe".to_vec();
    bytes.extend((0..=255u8).cycle().take(2048));
    bytes
}

#[tokio::test]
async fn upload_is_signed_and_sent_as_cloudinary_documents() {
    let server = MockServer::start().await;
    let problems = Arc::new(Mutex::new(Vec::new()));
    let file = png_bytes();
    Mock::given(method("POST"))
        .and(path(format!("/v1_1/{CLOUD}/image/upload")))
        .and(UploadMatch {
            file: file.clone(),
            problems: problems.clone(),
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(upload_answer()))
        .expect(1)
        .mount(&server)
        .await;

    let result = store(&server)
        .upload(&UploadRequest {
            bytes: &file,
            file_name: "route.png",
            content_type: "image/png",
            public_id: Some("route-2025"),
            folder: Some("dkl"),
        })
        .await;

    let image = result.unwrap_or_else(|e| panic!("{e}; mock saw: {:?}", problems.lock().unwrap()));
    assert_eq!(
        image,
        UploadedImage {
            public_id: "dkl/route-2025".to_string(),
            url: "http://res.cloudinary.com/dkl-test/image/upload/v1700000001/dkl/route-2025.png"
                .to_string(),
            secure_url: Some(
                "https://res.cloudinary.com/dkl-test/image/upload/v1700000001/dkl/route-2025.png"
                    .to_string()
            ),
            format: Some("png".to_string()),
            width: Some(1000),
            height: Some(672),
            bytes: Some(350749),
            folder: Some("dkl".to_string()),
            version: Some(1700000001),
        }
    );
}

#[tokio::test]
async fn upload_signs_exactly_the_parameters_it_sends() {
    // The signed set for a public_id and folder, spelled out: overwrite
    // comes with public_id, and nothing else is signed.
    let server = MockServer::start().await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    Mock::given(method("POST"))
        .respond_with(move |request: &Request| {
            let content_type = request.headers["content-type"].to_str().unwrap();
            let parts = parse_multipart(content_type, &request.body).unwrap();
            *seen.lock().unwrap() = parts
                .iter()
                .filter(|p| p.name != "file")
                .map(|p| (p.name.clone(), String::from_utf8(p.body.clone()).unwrap()))
                .collect::<Vec<_>>();
            ResponseTemplate::new(200).set_body_json(upload_answer())
        })
        .mount(&server)
        .await;

    store(&server)
        .upload(&UploadRequest {
            bytes: b"png",
            file_name: "route.png",
            content_type: "image/png",
            public_id: Some("route-2025"),
            folder: Some("dkl"),
        })
        .await
        .unwrap();

    let mut fields = received.lock().unwrap().clone();
    fields.sort();
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "api_key",
            "folder",
            "overwrite",
            "public_id",
            "signature",
            "timestamp"
        ]
    );
    let signed: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        string_to_sign(&signed),
        "folder=dkl&overwrite=true&public_id=route-2025&timestamp=1700000000"
    );
    assert_eq!(
        field(&fields, "signature"),
        Some(expected_signature(&fields, API_SECRET).as_str())
    );
}

#[tokio::test]
async fn upload_without_public_id_signs_the_timestamp_alone() {
    let server = MockServer::start().await;
    let problems = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path(format!("/v1_1/{CLOUD}/image/upload")))
        .and(UploadMatch {
            file: b"png".to_vec(),
            problems: problems.clone(),
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(upload_answer()))
        .expect(1)
        .mount(&server)
        .await;

    let result = store(&server)
        .upload(&UploadRequest {
            bytes: b"png",
            file_name: "route.png",
            content_type: "image/png",
            public_id: None,
            folder: None,
        })
        .await;
    assert!(result.is_ok(), "{result:?}; mock saw: {problems:?}");
}

#[tokio::test]
async fn upload_answer_without_url_is_a_bad_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "public_id": "x"
        })))
        .mount(&server)
        .await;

    let error = store(&server)
        .upload(&UploadRequest {
            bytes: b"png",
            file_name: "route.png",
            content_type: "image/png",
            public_id: None,
            folder: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImageStoreError::BadResponse { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("url"), "{error}");
    assert!(!error.is_transient());
}

// ---------------------------------------------------------------------------
// 3. Destroy.

/// Decodes application/x-www-form-urlencoded.
fn parse_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

struct DestroyMatch {
    public_id: &'static str,
    invalidate: bool,
    problems: Arc<Mutex<Vec<String>>>,
}

impl DestroyMatch {
    fn check(&self, request: &Request) -> Result<(), String> {
        let content_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type != "application/x-www-form-urlencoded" {
            return Err(format!("content type {content_type:?}"));
        }
        let fields = parse_urlencoded(&request.body);
        if field(&fields, "public_id") != Some(self.public_id) {
            return Err(format!("public_id {:?}", field(&fields, "public_id")));
        }
        let invalidate = self.invalidate.then_some("true");
        if field(&fields, "invalidate") != invalidate {
            return Err(format!("invalidate {:?}", field(&fields, "invalidate")));
        }
        check_signed_fields(&fields)
    }
}

impl Match for DestroyMatch {
    fn matches(&self, request: &Request) -> bool {
        let verdict = self.check(request);
        if let Err(problem) = &verdict {
            self.problems.lock().unwrap().push(problem.clone());
        }
        verdict.is_ok()
    }
}

async fn destroy_answering(
    result: &str,
    invalidate: bool,
) -> (Result<Destroyed, ImageStoreError>, Vec<String>) {
    let server = MockServer::start().await;
    let problems = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path(format!("/v1_1/{CLOUD}/image/destroy")))
        .and(DestroyMatch {
            public_id: "dkl/route 2025",
            invalidate,
            problems: problems.clone(),
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "result": result
        })))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = store(&server)
        .with_invalidate(invalidate)
        .destroy("dkl/route 2025")
        .await;
    let seen = problems.lock().unwrap().clone();
    (outcome, seen)
}

#[tokio::test]
async fn destroy_ok_is_removed() {
    let (outcome, problems) = destroy_answering("ok", false).await;
    assert_eq!(
        outcome.ok(),
        Some(Destroyed::Removed),
        "mock saw: {problems:?}"
    );
}

#[tokio::test]
async fn destroy_not_found_is_confirmed_gone() {
    let (outcome, problems) = destroy_answering("not found", false).await;
    assert_eq!(
        outcome.ok(),
        Some(Destroyed::NotFound),
        "mock saw: {problems:?}"
    );
}

#[tokio::test]
async fn destroy_with_invalidate_signs_it() {
    let (outcome, problems) = destroy_answering("ok", true).await;
    assert_eq!(
        outcome.ok(),
        Some(Destroyed::Removed),
        "mock saw: {problems:?}"
    );
}

#[tokio::test]
async fn destroy_with_another_result_is_an_error() {
    let (outcome, _) = destroy_answering("error", false).await;
    let error = outcome.unwrap_err();
    assert!(
        matches!(error, ImageStoreError::BadResponse { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"error\""), "{error}");
}

// ---------------------------------------------------------------------------
// 4. Errors.

async fn destroy_against(response: ResponseTemplate) -> ImageStoreError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    store(&server).destroy("x").await.unwrap_err()
}

#[tokio::test]
async fn too_many_requests_is_transient_with_retry_after() {
    let error = destroy_against(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "7")
            .set_body_json(serde_json::json!({"error": {"message": "Rate Limit Exceeded"}})),
    )
    .await;
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(
        matches!(&error, ImageStoreError::Transient { status: Some(429), message, .. } if message == "Rate Limit Exceeded"),
        "{error:?}"
    );
    assert!(error.to_string().contains("retry after 7 s"), "{error}");
}

#[tokio::test]
async fn server_error_is_transient() {
    let error = destroy_against(
        ResponseTemplate::new(500).set_body_string("<html><body>Internal error</body></html>"),
    )
    .await;
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(error.retry_after(), None);
    assert!(
        matches!(&error, ImageStoreError::Transient { status: Some(500), message, .. } if message.contains("Internal error")),
        "{error:?}"
    );
}

#[tokio::test]
async fn invalid_signature_is_rejected_with_cloudinarys_message() {
    let message = "Invalid Signature 0123456789abcdef0123456789abcdef01234567. String to sign - 'public_id=x&timestamp=1700000000'.";
    let error = destroy_against(
        ResponseTemplate::new(401)
            .set_body_json(serde_json::json!({"error": {"message": message}})),
    )
    .await;
    assert!(!error.is_transient());
    assert_eq!(error.retry_after(), None);
    assert!(
        matches!(&error, ImageStoreError::Rejected { status: 401, message: m, .. } if m == message),
        "{error:?}"
    );
    let shown = error.to_string();
    assert!(
        shown.starts_with("Cloudinary refused the deletion (401): Invalid Signature"),
        "{shown}"
    );
    assert!(shown.contains("DKL_CLOUDINARY_URL"), "{shown}");
}

#[tokio::test]
async fn bad_request_is_rejected_and_long_bodies_are_cut() {
    let body = format!("   {}   ", "x".repeat(1000));
    let error = destroy_against(ResponseTemplate::new(400).set_body_string(body)).await;
    assert!(!error.is_transient());
    match &error {
        ImageStoreError::Rejected {
            status: 400,
            message,
            ..
        } => {
            assert!(message.chars().count() <= 301, "{}", message.len());
            assert!(message.starts_with("xxx"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rate_limited_420_is_rejected() {
    let error = destroy_against(
        ResponseTemplate::new(420)
            .set_body_json(serde_json::json!({"error": {"message": "Rate Limited"}})),
    )
    .await;
    assert!(
        matches!(&error, ImageStoreError::Rejected { status: 420, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let store = ImageStore::new(
        &format!("http://127.0.0.1:{port}/v1_1"),
        credentials(),
        Duration::from_secs(5),
    )
    .unwrap();
    let error = store.destroy("x").await.unwrap_err();
    assert!(
        matches!(&error, ImageStoreError::Transient { status: None, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("no answer"), "{error}");
}

#[tokio::test]
async fn timeout_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"result": "ok"}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let store = ImageStore::new(
        &format!("{}/v1_1", server.uri()),
        credentials(),
        Duration::from_millis(200),
    )
    .unwrap();
    let error = store.destroy("x").await.unwrap_err();
    assert!(
        matches!(&error, ImageStoreError::Transient { status: None, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn no_error_shows_the_secret() {
    let error = destroy_against(
        ResponseTemplate::new(401)
            .set_body_json(serde_json::json!({"error": {"message": "Invalid API key"}})),
    )
    .await;
    assert!(!format!("{error} {error:?}").contains(API_SECRET));
}

// ---------------------------------------------------------------------------
// 5. Credentials.

#[test]
fn cloudinary_url_parses() {
    let credentials =
        Credentials::from_cloudinary_url(" cloudinary://614335564976464:s3cr3t-Xy_9@dkl-test\n")
            .unwrap();
    assert_eq!(credentials.cloud_name, "dkl-test");
    assert_eq!(credentials.api_key, "614335564976464");
    assert_eq!(credentials.api_secret, "s3cr3t-Xy_9");
    let with_options =
        Credentials::from_cloudinary_url("cloudinary://k:s3cr3t-Xy_9@dkl-test?secure=true")
            .unwrap();
    assert_eq!(with_options.cloud_name, "dkl-test");
}

#[test]
fn bad_cloudinary_urls_are_refused_without_showing_the_secret() {
    let bad = [
        "https://614335564976464:s3cr3t-Xy_9@dkl-test",
        "cloudinary://614335564976464s3cr3t-Xy_9@dkl-test",
        "cloudinary://614335564976464:s3cr3t-Xy_9",
        "cloudinary://614335564976464:s3cr3t-Xy_9@",
        "cloudinary://:s3cr3t-Xy_9@dkl-test",
        "cloudinary://614335564976464:@dkl-test",
        "cloudinary://614335564976464:s3cr3t-Xy_9@dkl test",
        "",
    ];
    for url in bad {
        let error = Credentials::from_cloudinary_url(url).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(
            matches!(error, ImageStoreError::Config(_)),
            "{url}: {shown}"
        );
        assert!(!shown.contains("s3cr3t"), "{url}: {shown}");
        assert!(
            shown.contains("cloudinary://<api_key>:<api_secret>@<cloud_name>"),
            "{shown}"
        );
    }
}

#[test]
fn debug_hides_the_secret() {
    let shown = format!("{:?}", credentials());
    assert!(!shown.contains(API_SECRET), "{shown}");
    assert!(shown.contains("***") && shown.contains(API_KEY), "{shown}");
    let store = ImageStore::new(
        "https://api.cloudinary.com/v1_1",
        credentials(),
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(!format!("{store:?}").contains(API_SECRET));
}

#[test]
fn bad_base_url_is_a_config_error() {
    let error =
        ImageStore::new("api.cloudinary.com", credentials(), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(error, ImageStoreError::Config(_)), "{error:?}");
}
