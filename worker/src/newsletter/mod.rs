//! Newsletters: scheduled by admins, sent once per recipient, with
//! one-click unsubscribe.
//!
//! # Quick start
//!
//! ```sql
//! INSERT INTO newsletters (title, content) VALUES ('Nieuws', 'De inschrijving is open!') RETURNING id;
//! UPDATE newsletters SET status = 'scheduled', scheduled_send_time = now() + interval '1 hour' WHERE id = '…';
//! SELECT * FROM newsletter_progress WHERE newsletter_id = '…';
//! ```
//!
//! or `dklctl newsletter create|schedule|status|pause|resume|cancel`.
//!
//! How it fits together:
//! - the `newsletters` trigger checks every status change and enqueues the
//!   newsletter's four lane jobs (`send_newsletter`) when it is scheduled or
//!   resumed;
//! - a lane ([`crate::handlers::send_newsletter`]) fixes the recipients
//!   (`dkl_newsletter_start`), claims deliveries in batches, renders each
//!   ([`message`]), and sends it on the `newsletter` SMTP configuration;
//! - a [`writer::DeliveryWriter`] (two per process) commits each delivery
//!   as `sending` before its SMTP transaction and its outcome after it,
//!   many senders per round trip, on a session whose death (kill -9) lets
//!   any other lane return its claimed deliveries to `pending` and mark its
//!   `sending` ones `unknown` — never sent twice;
//! - [`token`] signs the unsubscribe links that [`crate::unsubscribe`]
//!   serves.

pub mod message;
pub mod token;
pub mod writer;
