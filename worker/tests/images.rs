//! The image jobs against a real PostgreSQL and a stand-in Cloudinary
//! (wiremock): `upload_image` from a file and from a real message's
//! attachment (the opt-in rule of DKL_IMAGE_UPLOAD_ACCOUNTS enqueues it),
//! `cleanup_images` removing rows only after the store confirmed, and the
//! provider's 429, 500 and 401 answers. The requests' exact shape and
//! signature are checked in `cloudinary.rs`; here the matchers check the
//! endpoint and the image named.

use std::sync::Arc;
use std::time::Duration;

use dkl_shared::config::{Config, ImagesConfig};
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId, Registry};
use dkl_shared::kinds::{CleanupImages, UploadImage};
use dkl_tests::{migrate, work_one};
use dkl_worker::handlers::cleanup_images;
use dkl_worker::handlers::process_incoming_email::Processor;
use dkl_worker::handlers::upload_image::{self, Images};
use dkl_worker::images::{Credentials, ImageStore};
use dkl_worker::store::incoming_emails;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

/// The body holds these bytes (a multipart body with an image is not
/// UTF-8, which wiremock's `body_string_contains` needs).
struct BodyHas(Vec<u8>);

impl Match for BodyHas {
    fn matches(&self, request: &Request) -> bool {
        request
            .body
            .windows(self.0.len())
            .any(|w| w == self.0.as_slice())
    }
}

fn body_string_contains(s: impl AsRef<str>) -> BodyHas {
    BodyHas(s.as_ref().as_bytes().to_vec())
}

const UPLOAD: &str = "/v1_1/dkl-test/image/upload";
const DESTROY: &str = "/v1_1/dkl-test/image/destroy";

fn images(pool: &PgPool, server: &MockServer) -> Arc<Images> {
    let credentials = Credentials {
        cloud_name: "dkl-test".into(),
        api_key: "614335564976464".into(),
        api_secret: "s3cr3t".into(),
    };
    let store = ImageStore::new(
        &format!("{}/v1_1", server.uri()),
        credentials,
        Duration::from_secs(5),
    )
    .unwrap();
    Arc::new(Images {
        pool: pool.clone(),
        store: Ok(store),
        config: ImagesConfig {
            upload_accounts: vec!["info".into()],
            ..ImagesConfig::default()
        },
    })
}

fn registry(images: Arc<Images>) -> Registry {
    let mut registry = Registry::new();
    upload_image::register(&mut registry, images.clone());
    cleanup_images::register(&mut registry, images);
    registry
}

/// A Cloudinary upload answer (the fields its documentation's sample shows).
fn uploaded(public_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "asset_id": "3515c6000a548515f1134043f9785c2f",
        "public_id": public_id,
        "version": 1_700_000_000,
        "version_id": "7d2cc533bee9ff39f7da7414b61fce7e",
        "signature": "d0b1009e3271a942836c25756ce3e04d205bf754",
        "width": 64,
        "height": 48,
        "format": "jpg",
        "resource_type": "image",
        "created_at": "2026-11-30T12:00:00Z",
        "tags": [],
        "bytes": 2_048,
        "type": "upload",
        "etag": "7b17ec5ebe5b1d2f5e6a6b8b2d4a8c11",
        "placeholder": false,
        "url": format!("http://res.cloudinary.com/dkl-test/image/upload/v1700000000/{public_id}.jpg"),
        "secure_url": format!("https://res.cloudinary.com/dkl-test/image/upload/v1700000000/{public_id}.jpg"),
        "folder": "dkl",
        "original_filename": "photo"
    }))
}

async fn enqueue<J: dkl_shared::jobs::JobKind>(pool: &PgPool, job: &J) -> JobId {
    JobClient::new(pool.clone())
        .enqueue(job, EnqueueOptions::default())
        .await
        .unwrap()
        .id
}

async fn state(pool: &PgPool, id: &JobId) -> (String, Option<String>, Option<Value>, Option<f64>) {
    sqlx::query_as(
        "SELECT state, last_error, result, extract(epoch FROM run_at - now())::float8
           FROM job_status WHERE job_id = $1",
    )
    .bind(&id.0)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A real message with two JPEG attachments (CPython's email test corpus).
const WITH_JPEGS: &[u8] =
    include_bytes!("fixtures/mail/cpython-msg_22-jpeg-attachments-no-subject.eml");

async fn receive(pool: &PgPool, account: &str, raw: &[u8]) -> Uuid {
    let incoming = dkl_worker::import::incoming(raw.to_vec(), 50 << 20);
    let hash = incoming.content_hash.clone();
    incoming_emails::store_batch(pool, account, None, &[incoming])
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT id FROM incoming_emails WHERE content_hash = $1 AND account_type = $2",
    )
    .bind(hash)
    .bind(account)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn image_attachments_of_an_opted_in_account_are_uploaded(pool: PgPool) {
    migrate(&pool).await;
    let server = MockServer::start().await;
    let vars = [
        ("DKL_IMAP_ACCOUNTS", "info,pers"),
        ("DKL_IMAGE_UPLOAD_ACCOUNTS", "info"),
    ];
    let config = Config::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| {
                let account_var = k.strip_prefix("DKL_IMAP_")?;
                let (_, field) = account_var.split_once('_')?;
                Some(match field {
                    "HOST" => "127.0.0.1".into(),
                    "PORT" => "1".into(),
                    "TLS" => "plain".into(),
                    "IDLE" => "false".into(),
                    "USER" | "PASSWORD" => "x@example.org".into(),
                    _ => return None,
                })
            })
    })
    .unwrap();
    let processor = Processor::new(&pool, &config);
    let info = receive(&pool, "info", WITH_JPEGS).await;
    let pers = receive(&pool, "pers", WITH_JPEGS).await;
    processor.process_batch(&[info, pers]).await.unwrap();

    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT job FROM apalis.jobs WHERE job_type = 'upload_image' ORDER BY job",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let jobs: Vec<UploadImage> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let positions: Vec<(Option<Uuid>, Option<i32>)> = jobs
        .iter()
        .map(|j| (j.incoming_email_id, j.position))
        .collect();
    let images_in_db: Vec<i32> = sqlx::query_scalar(
        "SELECT position FROM incoming_email_attachments
          WHERE incoming_email_id = $1 AND content_type LIKE 'image/%' ORDER BY position",
    )
    .bind(info)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(images_in_db.len(), 2, "the message carries two JPEGs");
    assert_eq!(
        positions,
        images_in_db
            .iter()
            .map(|p| (Some(info), Some(*p)))
            .collect::<Vec<_>>(),
        "only the opted-in account's images"
    );

    // Run them against the store.
    for p in &images_in_db {
        let id = format!("dkl/mail-{info}-{p}");
        Mock::given(method("POST"))
            .and(path(UPLOAD))
            .and(body_string_contains(format!("mail-{info}-{p}")))
            .respond_with(uploaded(&id))
            .expect(1)
            .mount(&server)
            .await;
    }
    let registry = registry(images(&pool, &server));
    for _ in 0..2 {
        let job = work_one(&pool, registry.clone(), "images").await.unwrap();
        assert_eq!(job.status, "Done", "{:?}", job.last_error);
    }
    type Row = (String, Option<Uuid>, Option<Uuid>, i32, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT public_id, uploaded_by, incoming_email_id, attachment_position, secure_url
           FROM uploaded_images ORDER BY attachment_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (row, p) in rows.iter().zip(&images_in_db) {
        assert_eq!(row.0, format!("dkl/mail-{info}-{p}"));
        assert_eq!(row.1, None, "an upload made by a job has no uploaded_by");
        assert_eq!((row.2, row.3), (Some(info), *p));
        assert!(
            row.4
                .as_deref()
                .unwrap()
                .starts_with("https://res.cloudinary.com/")
        );
    }
    // Following the message up again enqueues nothing new.
    sqlx::query("UPDATE incoming_emails SET processed = false")
        .execute(&pool)
        .await
        .unwrap();
    processor.process_batch(&[info]).await.unwrap();
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'upload_image' AND status = 'Pending'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "uploaded attachments are not uploaded again");
}

#[sqlx::test(migrations = false)]
async fn a_file_upload_records_the_person_who_uploaded(pool: PgPool) {
    migrate(&pool).await;
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("finish.jpg");
    std::fs::write(&file, b"\xff\xd8\xff\xe0 a jpeg, as far as this test cares").unwrap();
    let anna: Uuid = sqlx::query_scalar(
        "INSERT INTO gebruikers (naam, email) VALUES ('Anna', 'anna@example.org') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    Mock::given(method("POST"))
        .and(path(UPLOAD))
        .and(body_string_contains("filename=\"finish.jpg\""))
        .respond_with(uploaded("dkl/file-abc"))
        .expect(1)
        .mount(&server)
        .await;
    let registry = registry(images(&pool, &server));

    let path = file.to_string_lossy().into_owned();
    let ok = enqueue(
        &pool,
        &UploadImage {
            path: Some(path.clone()),
            uploaded_by: Some(anna),
            ..UploadImage::default()
        },
    )
    .await;
    work_one(&pool, registry.clone(), "images").await.unwrap();
    let (s, _, result, _) = state(&pool, &ok).await;
    assert_eq!(s, "done");
    assert_eq!(result.unwrap()["public_id"], "dkl/file-abc");
    let by: Option<Uuid> = sqlx::query_scalar("SELECT uploaded_by FROM uploaded_images")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(by, Some(anna));

    // Someone who is not a gebruiker: refused before anything is sent.
    let ghost = enqueue(
        &pool,
        &UploadImage {
            path: Some(path),
            uploaded_by: Some(Uuid::new_v4()),
            ..UploadImage::default()
        },
    )
    .await;
    work_one(&pool, registry.clone(), "images").await.unwrap();
    let (s, error, _, _) = state(&pool, &ghost).await;
    assert_eq!(s, "discarded");
    assert!(error.unwrap().contains("is not a gebruikers row"));
    // Neither or both sources, a missing file: clear refusals.
    let neither = enqueue(&pool, &UploadImage::default()).await;
    work_one(&pool, registry.clone(), "images").await.unwrap();
    assert!(
        state(&pool, &neither)
            .await
            .1
            .unwrap()
            .contains("needs either")
    );
    let missing = enqueue(
        &pool,
        &UploadImage {
            path: Some("/nonexistent/x.png".into()),
            ..UploadImage::default()
        },
    )
    .await;
    work_one(&pool, registry, "images").await.unwrap();
    let (s, error, _, _) = state(&pool, &missing).await;
    assert_eq!(s, "discarded");
    assert!(error.unwrap().contains("cannot read /nonexistent/x.png"));
}

#[sqlx::test(migrations = false)]
async fn provider_errors_retry_or_fail_with_its_message(pool: PgPool) {
    migrate(&pool).await;
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(images(&pool, &server));
    let mut ids = Vec::new();
    for (name, answer) in [
        ("busy", ResponseTemplate::new(429).insert_header("Retry-After", "120")
            .set_body_json(json!({"error": {"message": "Rate Limit Exceeded"}}))),
        ("down", ResponseTemplate::new(500).set_body_string("<html>Internal Server Error</html>")),
        ("badkey", ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "Invalid Signature 0123. String to sign - 'timestamp=1'."}}))),
    ] {
        let file = dir.path().join(format!("{name}.png"));
        std::fs::write(&file, name.as_bytes()).unwrap();
        Mock::given(method("POST")).and(path(UPLOAD)).and(body_string_contains(format!("filename=\"{name}.png\"")))
            .respond_with(answer).mount(&server).await;
        let id = enqueue(&pool, &UploadImage { path: Some(file.to_string_lossy().into_owned()), ..UploadImage::default() }).await;
        work_one(&pool, registry.clone(), "images").await.unwrap();
        ids.push(id);
        // A quick retry would be due before the next job: park it (a
        // Retry-After of minutes stays as the provider asked).
        sqlx::query(
            "UPDATE apalis.jobs SET run_at = now() + interval '1 hour'
              WHERE id = $1 AND status = 'Pending' AND run_at < now() + interval '1 minute'",
        )
        .bind(&ids.last().unwrap().0)
        .execute(&pool)
        .await
        .unwrap();
    }
    let (s, error, _, wait) = state(&pool, &ids[0]).await;
    assert_eq!(s, "retrying", "429 is retried");
    assert!(error.unwrap().contains("Rate Limit Exceeded"));
    assert!(
        wait.unwrap() > 100.0,
        "the provider's Retry-After is honoured: {wait:?}"
    );
    let (s, error, _, _) = state(&pool, &ids[1]).await;
    assert_eq!(s, "retrying", "500 is retried");
    assert!(error.unwrap().contains("500"));
    let (s, error, _, _) = state(&pool, &ids[2]).await;
    assert_eq!(s, "discarded", "401 is not retried");
    assert!(
        error.unwrap().contains("Invalid Signature"),
        "the provider's message is kept"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM uploaded_images")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
}

async fn mark(pool: &PgPool, public_id: &str, deleted_days_ago: Option<i32>) {
    sqlx::query(
        "INSERT INTO uploaded_images (public_id, url, deleted_at)
         VALUES ($1, 'http://x/' || $1, now() - make_interval(days => $2))",
    )
    .bind(public_id)
    .bind(deleted_days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn left(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT public_id FROM uploaded_images ORDER BY public_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn cleanup_removes_a_row_only_after_the_store_confirmed(pool: PgPool) {
    migrate(&pool).await;
    let server = MockServer::start().await;
    mark(&pool, "dkl/a-gone", Some(100)).await;
    mark(&pool, "dkl/b-already", Some(95)).await;
    mark(&pool, "dkl/c-refused", Some(92)).await;
    mark(&pool, "dkl/c2-after-refused", Some(91)).await;
    mark(&pool, "dkl/d-in-grace", Some(10)).await;
    mark(&pool, "dkl/e-kept", None).await;
    let answer = |public_id: &str, response: ResponseTemplate| {
        Mock::given(method("POST"))
            .and(path(DESTROY))
            .and(body_string_contains(format!(
                "public_id={}",
                public_id.replace('/', "%2F")
            )))
            .respond_with(response)
    };
    let ok = || ResponseTemplate::new(200).set_body_json(json!({"result": "ok"}));
    answer("dkl/a-gone", ok()).expect(1).mount(&server).await;
    answer(
        "dkl/b-already",
        ResponseTemplate::new(200).set_body_json(json!({"result": "not found"})),
    )
    .expect(1)
    .mount(&server)
    .await;
    answer(
        "dkl/c-refused",
        ResponseTemplate::new(400)
            .set_body_json(json!({"error": {"message": "Invalid public_id dkl/c-refused"}})),
    )
    .expect(1)
    .mount(&server)
    .await;
    answer("dkl/c2-after-refused", ok())
        .expect(1)
        .mount(&server)
        .await;
    let registry = registry(images(&pool, &server));

    // The grace period is the uploaded_images retention rule's age (90 days).
    // An image refused on its own is reported; the others go on.
    let id = enqueue(&pool, &CleanupImages::default()).await;
    work_one(&pool, registry.clone(), "images").await.unwrap();
    let (s, error, result, _) = state(&pool, &id).await;
    assert_eq!(s, "discarded", "a refused image is reported");
    assert!(error.unwrap().contains("Invalid public_id dkl/c-refused"));
    let result = result.unwrap();
    assert_eq!(
        (result["removed"].as_u64(), result["already_gone"].as_u64()),
        (Some(3), Some(1)),
        "{result}"
    );
    assert_eq!(
        left(&pool).await,
        ["dkl/c-refused", "dkl/d-in-grace", "dkl/e-kept"]
    );

    // The store is down: nothing is removed, the job is retried.
    server.reset().await;
    answer("dkl/c-refused", ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let id = enqueue(&pool, &CleanupImages::default()).await;
    work_one(&pool, registry.clone(), "images").await.unwrap();
    assert_eq!(state(&pool, &id).await.0, "retrying");
    // (Out of the way, so the next work_one takes the next job.)
    sqlx::query("DELETE FROM apalis.jobs WHERE id = $1")
        .bind(&id.0)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(left(&pool).await.len(), 3);
    // No answer: the image may be gone, so it can no longer be restored.
    let restore = sqlx::query(
        "UPDATE uploaded_images SET deleted_at = NULL WHERE public_id = 'dkl/c-refused'",
    )
    .execute(&pool)
    .await;
    assert!(
        restore.is_err(),
        "restored while its destroy's outcome is unknown"
    );

    // Wrong credentials: the first refusal stops the run (every image would
    // get the same answer), nothing is removed.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path(DESTROY))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"error": {"message": "Invalid api_key 61433556"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let id = enqueue(
        &pool,
        &CleanupImages {
            grace_secs: Some(86_400),
        },
    )
    .await;
    work_one(&pool, registry.clone(), "images").await.unwrap();
    let (s, error, _, _) = state(&pool, &id).await;
    assert_eq!(s, "discarded");
    assert!(error.unwrap().contains("Invalid api_key"));
    assert_eq!(left(&pool).await.len(), 3);
    server.verify().await;

    // A shorter grace, given by the job, reaches the younger one too.
    server.reset().await;
    answer("dkl/c-refused", ok()).mount(&server).await;
    answer("dkl/d-in-grace", ok()).mount(&server).await;
    let id = enqueue(
        &pool,
        &CleanupImages {
            grace_secs: Some(86_400),
        },
    )
    .await;
    work_one(&pool, registry, "images").await.unwrap();
    assert_eq!(state(&pool, &id).await.0, "done");
    assert_eq!(left(&pool).await, ["dkl/e-kept"]);
}

#[sqlx::test(migrations = false)]
async fn an_image_being_destroyed_cannot_be_restored(pool: PgPool) {
    migrate(&pool).await;
    mark(&pool, "dkl/x", Some(100)).await;
    let id: Uuid = sqlx::query_scalar("SELECT id FROM uploaded_images")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        dkl_worker::store::images::claim_for_destroy(&pool, id, chrono::Utc::now())
            .await
            .unwrap()
    );
    let refused = sqlx::query("UPDATE uploaded_images SET deleted_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is being destroyed at the image store"),
        "{refused}"
    );
    // Nor by uploading it again under the same name (the upsert).
    let again = dkl_worker::store::images::record(
        &pool,
        &dkl_worker::store::images::NewImage {
            public_id: "dkl/x",
            url: "http://x/dkl/x",
            secure_url: None,
            format: None,
            width: None,
            height: None,
            bytes: None,
            folder: None,
            uploaded_by: None,
            incoming_email_id: None,
            attachment_position: None,
            source_path: None,
            content_hash: b"h",
        },
    )
    .await
    .unwrap_err();
    assert!(again.to_string().contains("is being destroyed"), "{again}");
    // Not destroyed after all (the store refused): it can be restored.
    dkl_worker::store::images::release_claim(&pool, id)
        .await
        .unwrap();
    sqlx::query("UPDATE uploaded_images SET deleted_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        !dkl_worker::store::images::claim_for_destroy(&pool, id, chrono::Utc::now())
            .await
            .unwrap(),
        "a restored image is not destroyed"
    );
}

#[sqlx::test(migrations = false)]
async fn without_a_store_image_jobs_say_what_to_set(pool: PgPool) {
    migrate(&pool).await;
    let images = Arc::new(Images::new(&pool, &ImagesConfig::default()));
    let id = enqueue(&pool, &CleanupImages::default()).await;
    work_one(&pool, registry(images), "images").await.unwrap();
    let (s, error, _, _) = state(&pool, &id).await;
    assert_eq!(s, "discarded");
    assert!(error.unwrap().contains("set DKL_CLOUDINARY_URL"));
}
