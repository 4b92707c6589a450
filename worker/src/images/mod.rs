//! Images kept in a Cloudinary-compatible image store: signed uploads and
//! deletions over its Upload API. No jobs and no database here: the job
//! handlers call [`ImageStore`] and keep what it answers.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn demo(png: &[u8]) -> Result<(), dkl_worker::images::ImageStoreError> {
//! use std::time::Duration;
//!
//! use dkl_worker::images::{
//!     Credentials, DEFAULT_BASE_URL, Destroyed, ImageStore, UploadRequest,
//! };
//!
//! let url = std::env::var("DKL_CLOUDINARY_URL").unwrap_or_default();
//! let credentials = Credentials::from_cloudinary_url(&url)?;
//! let store = ImageStore::new(DEFAULT_BASE_URL, credentials, Duration::from_secs(30))?;
//! let image = store
//!     .upload(&UploadRequest {
//!         bytes: png,
//!         file_name: "route.png",
//!         content_type: "image/png",
//!         public_id: Some("route-2025"),
//!         folder: Some("dkl"),
//!     })
//!     .await?;
//! println!("{}", image.secure_url.as_deref().unwrap_or(&image.url));
//! match store.destroy(&image.public_id).await {
//!     Ok(Destroyed::Removed | Destroyed::NotFound) => {}
//!     Err(e) if e.is_transient() => { /* try again after e.retry_after() */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! - [`signature`]: Cloudinary's request signature (SHA-1 over the sorted
//!   parameters and the API secret);
//! - [`cloudinary`]: the client, its credentials and its errors, sorted
//!   into worth retrying ([`ImageStoreError::Transient`]) or not.

pub mod cloudinary;
pub mod signature;

pub use cloudinary::{
    Credentials, DEFAULT_BASE_URL, Destroyed, ImageStore, ImageStoreError, Operation,
    UploadRequest, UploadedImage,
};
pub use signature::{sign, string_to_sign};
