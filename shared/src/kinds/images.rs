//! Images kept in a Cloudinary-compatible store: uploads and their cleanup.

use crate::jobs::JobKind;

/// Upload one image to the image store and record it in `uploaded_images`.
/// The image comes from a file (`path`) or from an attachment of an
/// incoming message (`incoming_email_id` + `position`); exactly one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadImage {
    /// A file readable by the worker.
    #[serde(default)]
    pub path: Option<String>,
    /// The message whose attachment to upload …
    #[serde(default)]
    pub incoming_email_id: Option<uuid::Uuid>,
    /// … and the attachment's position in it (from 0).
    #[serde(default)]
    pub position: Option<i32>,
    /// The store's folder; default `DKL_IMAGE_FOLDER`.
    #[serde(default)]
    pub folder: Option<String>,
    /// The image's name at the store; default derived from the source, so a
    /// retried upload overwrites itself instead of adding a copy.
    #[serde(default)]
    pub public_id: Option<String>,
    /// The `gebruikers.id` who uploaded it; none for uploads a job makes.
    #[serde(default)]
    pub uploaded_by: Option<uuid::Uuid>,
}

impl JobKind for UploadImage {
    const KIND: &'static str = "upload_image";
    const QUEUE: &'static str = "images";
    const MAX_ATTEMPTS: i32 = 8;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);
}

/// Destroy at the store the images marked deleted (`uploaded_images.deleted_at`)
/// longer ago than the grace period, and remove each row once the store
/// confirmed.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupImages {
    /// Overrides the grace period (default: the `uploaded_images` retention
    /// rule's `keep_for`), in seconds.
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

impl JobKind for CleanupImages {
    const KIND: &'static str = "cleanup_images";
    const QUEUE: &'static str = "images";
    const MAX_ATTEMPTS: i32 = 8;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
}
