//! `uploaded_images`: what the image store holds, the attachments that
//! become images, and the images marked deleted awaiting their cleanup.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An attachment of an incoming message, to upload.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attachment {
    /// Its file name, when the message gave one.
    pub file_name: Option<String>,
    /// Its MIME type.
    pub content_type: String,
    /// The decoded bytes (None when kept in an external store).
    pub content: Option<Vec<u8>>,
}

/// The attachment at `position` of message `email`.
pub async fn attachment(
    pool: &PgPool,
    email: Uuid,
    position: i32,
) -> Result<Option<Attachment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT file_name, content_type, content FROM incoming_email_attachments
          WHERE incoming_email_id = $1 AND position = $2",
    )
    .bind(email)
    .bind(position)
    .fetch_optional(pool)
    .await
}

/// True when `id` is a `gebruikers` row.
pub async fn gebruiker_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM gebruikers WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// An image the store accepted, to record.
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// The store's name for it.
    pub public_id: &'a str,
    /// Its URL.
    pub url: &'a str,
    /// Its https URL.
    pub secure_url: Option<&'a str>,
    /// Its format (jpg, png…).
    pub format: Option<&'a str>,
    /// Width in pixels.
    pub width: Option<i32>,
    /// Height in pixels.
    pub height: Option<i32>,
    /// Size in bytes.
    pub bytes: Option<i64>,
    /// The store's folder.
    pub folder: Option<&'a str>,
    /// Who uploaded it (a checked `gebruikers.id`), if a person did.
    pub uploaded_by: Option<Uuid>,
    /// The message it came from …
    pub incoming_email_id: Option<Uuid>,
    /// … and its attachment position.
    pub attachment_position: Option<i32>,
    /// The file it came from.
    pub source_path: Option<&'a str>,
    /// SHA-256 of the uploaded bytes.
    pub content_hash: &'a [u8],
}

/// Records an upload; uploading the same `public_id` again (a retried
/// job) updates the row instead of adding one.
pub async fn record(pool: &PgPool, image: &NewImage<'_>) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO uploaded_images
             (public_id, url, secure_url, format, width, height, bytes, folder, uploaded_by,
              incoming_email_id, attachment_position, source_path, content_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (public_id) DO UPDATE
            SET url = EXCLUDED.url, secure_url = EXCLUDED.secure_url, format = EXCLUDED.format,
                width = EXCLUDED.width, height = EXCLUDED.height, bytes = EXCLUDED.bytes,
                folder = EXCLUDED.folder, content_hash = EXCLUDED.content_hash, deleted_at = NULL
         RETURNING id",
    )
    .bind(image.public_id)
    .bind(image.url)
    .bind(image.secure_url)
    .bind(image.format)
    .bind(image.width)
    .bind(image.height)
    .bind(image.bytes.and_then(|b| i32::try_from(b).ok()))
    .bind(image.folder)
    .bind(image.uploaded_by)
    .bind(image.incoming_email_id)
    .bind(image.attachment_position)
    .bind(image.source_path)
    .bind(image.content_hash)
    .fetch_one(pool)
    .await
}

/// An image marked deleted whose grace period is over.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Doomed {
    /// The row.
    pub id: Uuid,
    /// The store's name for it.
    pub public_id: String,
    /// When it was marked deleted.
    pub deleted_at: DateTime<Utc>,
}

/// Up to `limit` images marked deleted before `cutoff`, oldest first,
/// after `after` (the last of the previous page).
pub async fn marked_deleted_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Doomed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, public_id, deleted_at FROM uploaded_images
          WHERE deleted_at IS NOT NULL AND deleted_at < $1
            AND ($2::timestamptz IS NULL OR (deleted_at, id) > ($2, $3))
          ORDER BY deleted_at, id LIMIT $4",
    )
    .bind(cutoff)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Marks an image as being destroyed (a trigger then refuses to restore
/// it until the mark is cleared). False when it was restored, or marked
/// deleted again after `cutoff`, meanwhile: then it must not be destroyed.
pub async fn claim_for_destroy(
    pool: &PgPool,
    id: Uuid,
    cutoff: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE uploaded_images SET destroy_started_at = now()
          WHERE id = $1 AND deleted_at < $2",
    )
    .bind(id)
    .bind(cutoff)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Clears the mark of an image the store did not destroy.
pub async fn release_claim(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE uploaded_images SET destroy_started_at = NULL WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The `public_id` an attachment was already uploaded as, if it was (and
/// is not marked deleted: uploading it again restores it).
pub async fn uploaded_attachment(
    pool: &PgPool,
    email: Uuid,
    position: i32,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT public_id FROM uploaded_images
          WHERE incoming_email_id = $1 AND attachment_position = $2 AND deleted_at IS NULL",
    )
    .bind(email)
    .bind(position)
    .fetch_optional(pool)
    .await
}

/// Removes the row of an image the store confirmed gone, unless someone
/// restored it (cleared `deleted_at`) meanwhile.
pub async fn remove_destroyed(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM uploaded_images WHERE id = $1 AND deleted_at IS NOT NULL")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// The image attachments of `emails` fetched from one of `accounts`, as
/// (message, position) pairs without an upload yet.
pub async fn image_attachments_to_upload(
    conn: &mut PgConnection,
    emails: &[Uuid],
    accounts: &[String],
) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.incoming_email_id, a.position
           FROM incoming_email_attachments a
           JOIN incoming_emails m ON m.id = a.incoming_email_id
          WHERE a.incoming_email_id = ANY ($1)
            AND m.account_type = ANY ($2)
            AND lower(a.content_type) LIKE 'image/%'
            AND NOT EXISTS (SELECT 1 FROM uploaded_images u
                             WHERE u.incoming_email_id = a.incoming_email_id
                               AND u.attachment_position = a.position)
          ORDER BY a.incoming_email_id, a.position",
    )
    .bind(emails)
    .bind(accounts)
    .fetch_all(conn)
    .await
}
