//! `upload_image`: one image, from a file or from an attachment of an
//! incoming message, to the image store, recorded in `uploaded_images`.
//!
//! The store's name for an image (`public_id`) is derived from its source
//! (the attachment's message and position, or the file's SHA-256), so a
//! retried job replaces its own upload instead of adding a copy, and the
//! row is keyed on it. A person's id in `uploaded_by` must be a real
//! `gebruikers` row; uploads made by jobs have none (no made-up "system
//! user").

use std::sync::Arc;

use dkl_shared::config::ImagesConfig;
use dkl_shared::jobs::{self, JobContext, JobError, Registry};
use dkl_shared::kinds::UploadImage;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::images::{ImageStore, ImageStoreError, UploadRequest};
use crate::store::images::{self as store, NewImage};

/// What image jobs share: the database, the store (None when
/// `DKL_CLOUDINARY_URL` is not set) and the settings.
pub struct Images {
    /// The database.
    pub pool: PgPool,
    /// The image store, or why there is none.
    pub store: Result<ImageStore, String>,
    /// `DKL_IMAGE_*` and `DKL_CLOUDINARY_*`.
    pub config: ImagesConfig,
}

impl Images {
    /// The store from `config`; without one (not configured, or its URL
    /// does not read: logged) every image job says why.
    pub fn new(pool: &PgPool, config: &ImagesConfig) -> Self {
        let store = match config.cloudinary_url.as_deref() {
            None => Err("no image store is configured: set DKL_CLOUDINARY_URL=cloudinary://<api_key>:<api_secret>@<cloud_name> and enqueue the job again".to_string()),
            Some(url) => crate::images::Credentials::from_cloudinary_url(url)
                .and_then(|c| ImageStore::new(&config.base_url, c, config.timeout))
                .map_err(|e| {
                    tracing::error!(error = %e, "image store not usable");
                    format!("DKL_CLOUDINARY_URL is set but cannot be used: {e}")
                }),
        };
        Self {
            pool: pool.clone(),
            store,
            config: config.clone(),
        }
    }

    /// The store, or the error every image job gives without one.
    pub fn store(&self) -> Result<&ImageStore, JobError> {
        self.store.as_ref().map_err(JobError::permanent)
    }
}

/// Registers the `upload_image` handler.
pub fn register(registry: &mut Registry, images: Arc<Images>) {
    registry.register::<UploadImage, _, _>(move |job, ctx| {
        let images = images.clone();
        async move { images.upload(job, ctx).await }
    });
}

/// An image read from its source, ready to go.
struct Source {
    bytes: Vec<u8>,
    file_name: String,
    content_type: String,
    public_id: String,
    email: Option<(Uuid, i32)>,
    path: Option<String>,
}

impl Images {
    async fn upload(&self, job: UploadImage, ctx: JobContext) -> Result<(), JobError> {
        let store = self.store()?;
        if let Some(id) = job.uploaded_by
            && !store::gebruiker_exists(&self.pool, id)
                .await
                .map_err(JobError::retryable)?
        {
            return Err(JobError::permanent(format!(
                "uploaded_by {id} is not a gebruikers row; name the person who uploaded, or leave it out for an upload a job makes"
            )));
        }
        if let (Some(email), Some(position)) = (job.incoming_email_id, job.position)
            && let Some(public_id) = store::uploaded_attachment(&self.pool, email, position)
                .await
                .map_err(JobError::retryable)?
        {
            tracing::info!(%public_id, "attachment already uploaded");
            let result = json!({"already_uploaded": public_id});
            return jobs::admin::record_result(&self.pool, &ctx.id, &result)
                .await
                .map_err(JobError::retryable);
        }
        let source = self.read_source(&job).await?;
        if source.bytes.len() as u64 > self.config.max_bytes {
            return Err(JobError::permanent(format!(
                "the image is {} bytes, over DKL_IMAGE_MAX_MB ({} MB); it is not uploaded",
                source.bytes.len(),
                self.config.max_bytes / (1024 * 1024)
            )));
        }
        let folder = job.folder.as_deref().unwrap_or(&self.config.folder);
        let public_id = job.public_id.as_deref().unwrap_or(&source.public_id);
        let uploaded = store
            .upload(&UploadRequest {
                bytes: &source.bytes,
                file_name: &source.file_name,
                content_type: &source.content_type,
                public_id: Some(public_id),
                folder: Some(folder),
            })
            .await
            .map_err(store_error)?;
        let hash = Sha256::digest(&source.bytes);
        let id = store::record(
            &self.pool,
            &NewImage {
                public_id: &uploaded.public_id,
                url: &uploaded.url,
                secure_url: uploaded.secure_url.as_deref(),
                format: uploaded.format.as_deref(),
                width: uploaded.width,
                height: uploaded.height,
                bytes: uploaded.bytes,
                folder: uploaded.folder.as_deref().or(Some(folder)),
                uploaded_by: job.uploaded_by,
                incoming_email_id: source.email.map(|(e, _)| e),
                attachment_position: source.email.map(|(_, p)| p),
                source_path: source.path.as_deref(),
                content_hash: &hash[..],
            },
        )
        .await;
        let id = match id {
            Ok(id) => id,
            Err(e) => return Err(self.unrecorded(store, &uploaded.public_id, e).await),
        };
        tracing::info!(image = %id, public_id = %uploaded.public_id, bytes = source.bytes.len(), "image uploaded");
        let result = json!({"image": id, "public_id": uploaded.public_id, "url": uploaded.secure_url.as_deref().unwrap_or(&uploaded.url)});
        jobs::admin::record_result(&self.pool, &ctx.id, &result)
            .await
            .map_err(JobError::retryable)
    }

    async fn read_source(&self, job: &UploadImage) -> Result<Source, JobError> {
        match (&job.path, job.incoming_email_id, job.position) {
            (Some(path), None, None) => read_file(path).await,
            (None, Some(email), Some(position)) => self.read_attachment(email, position).await,
            _ => Err(JobError::permanent(
                "upload_image needs either {\"path\": \"/file.jpg\"} or {\"incoming_email_id\": \"…\", \"position\": 0}, not both or neither",
            )),
        }
    }

    async fn read_attachment(&self, email: Uuid, position: i32) -> Result<Source, JobError> {
        let Some(a) = store::attachment(&self.pool, email, position)
            .await
            .map_err(JobError::retryable)?
        else {
            return Err(JobError::permanent(format!(
                "incoming email {email} has no attachment at position {position} (or the message was deleted)"
            )));
        };
        if !a.content_type.to_ascii_lowercase().starts_with("image/") {
            return Err(JobError::permanent(format!(
                "attachment {position} of incoming email {email} is {}, not an image",
                a.content_type
            )));
        }
        let Some(bytes) = a.content else {
            return Err(JobError::permanent(format!(
                "attachment {position} of incoming email {email} is kept in an external store, not in the database"
            )));
        };
        Ok(Source {
            file_name: a
                .file_name
                .unwrap_or_else(|| format!("attachment-{position}")),
            content_type: a.content_type,
            public_id: format!("mail-{email}-{position}"),
            email: Some((email, position)),
            path: None,
            bytes,
        })
    }
}

async fn read_file(path: &str) -> Result<Source, JobError> {
    let content_type = image_type_of(path).ok_or_else(|| {
        JobError::permanent(format!(
            "{path} does not end in an image extension (jpg, jpeg, png, gif, webp, avif, heic, bmp, tif, tiff, svg)"
        ))
    })?;
    let bytes = tokio::fs::read(path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => JobError::permanent(
            format!("cannot read {path}: {e}; check the path and that the worker may read it"),
        ),
        _ => JobError::retryable(format!("cannot read {path}: {e}")),
    })?;
    let digest = Sha256::digest(&bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let file_name = std::path::Path::new(path)
        .file_name()
        .map_or_else(|| "image".to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Source {
        bytes,
        file_name,
        content_type: content_type.to_string(),
        public_id: format!("file-{hex}"),
        email: None,
        path: Some(path.to_string()),
    })
}

/// The MIME type of an image file by its extension.
fn image_type_of(path: &str) -> Option<&'static str> {
    let ext = std::path::Path::new(path)
        .extension()?
        .to_str()?
        .to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "heic" => "image/heic",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        _ => return None,
    })
}

impl Images {
    /// The upload went through but its row did not. A passing fault (a
    /// lost connection, a restore refused while a cleanup destroys the
    /// old copy) is retried: the upload replaces itself. A row the
    /// database refuses for good (the attachment is recorded under another
    /// name) fails, after the new copy is destroyed so it is not left at
    /// the store unrecorded.
    async fn unrecorded(&self, store: &ImageStore, public_id: &str, e: sqlx::Error) -> JobError {
        let unique = matches!(
            e.as_database_error().map(|d| d.kind()),
            Some(sqlx::error::ErrorKind::UniqueViolation)
        );
        if !unique {
            return JobError::retryable(format!(
                "the image was uploaded but not yet recorded: {e}"
            ));
        }
        if let Err(d) = store.destroy(public_id).await {
            tracing::warn!(%public_id, error = %d, "cannot destroy an upload that could not be recorded");
        }
        JobError::permanent(format!(
            "the attachment is already recorded under another name, so the new upload {public_id} was destroyed: {e}"
        ))
    }
}

/// 429/5xx and no answer are retried with backoff (at least the
/// provider's Retry-After); a refusal fails with the provider's message.
pub fn store_error(e: ImageStoreError) -> JobError {
    match e.retry_after() {
        _ if !e.is_transient() => JobError::permanent(e),
        Some(after) => JobError::retry_after(e.to_string(), after),
        None => JobError::retryable(e),
    }
}
