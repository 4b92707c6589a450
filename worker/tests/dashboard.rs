//! The operator dashboard over real HTTP against a real PostgreSQL: every
//! route, logins (token and argon2 password, 401 and slowed retries), the
//! CSRF token and origin checks on every action, the audit trail, what each
//! action changes, keyset pages, and a message's HTML framed without script.
//! (The same pages in a real browser: `dashboard_browser.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use dkl_shared::config::DashboardConfig;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId};
use dkl_shared::kinds::Ping;
use dkl_tests::migrate;
use dkl_worker::dashboard::Dashboard;
use dkl_worker::http;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "dashboard-test-token-0123456789abcdef";

/// A dashboard served on a free loopback port.
struct Served {
    base: String,
    client: reqwest::Client,
}

async fn serve(pool: &PgPool, config: DashboardConfig) -> Served {
    let listen = "127.0.0.1:0".parse().unwrap();
    let dashboard = Dashboard::new(&config, pool.clone(), Arc::default(), listen)
        .expect("a login is configured");
    let (addr, server) = http::bind_dashboard(listen, dashboard).await.unwrap();
    tokio::spawn(server);
    Served {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

fn token_config() -> DashboardConfig {
    DashboardConfig {
        token: Some(TOKEN.into()),
        password_hash: None,
        secure_cookie: None,
    }
}

/// A logged-in browser: its cookie and the CSRF token its pages carry.
struct Session {
    cookie: String,
    csrf: String,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login_as(&self, secret: &str, name: &str) -> reqwest::Response {
        self.client
            .post(self.url("/dashboard/login"))
            .form(&[("secret", secret), ("name", name)])
            .send()
            .await
            .unwrap()
    }

    async fn login(&self) -> Session {
        let r = self.login_as(TOKEN, "Tester").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let page = self.get(&cookie, "/dashboard").await;
        assert_eq!(page.0, StatusCode::OK, "{}", page.1);
        let csrf = page
            .1
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("every page carries the CSRF token")
            .to_string();
        Session { cookie, csrf }
    }

    async fn get(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let r = self
            .client
            .get(self.url(path))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// A form POST as a browser on this origin sends it.
    async fn post(&self, s: &Session, path: &str, csrf: Option<&str>) -> reqwest::Response {
        let form: Vec<(&str, &str)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
        self.client
            .post(self.url(path))
            .header(COOKIE, &s.cookie)
            .header("origin", &self.base)
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    async fn act(&self, s: &Session, path: &str) -> String {
        let r = self.post(s, path, Some(&s.csrf)).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        let to = r.headers()[LOCATION].to_str().unwrap().to_string();
        let notice = to.split("notice=").nth(1).unwrap_or_default();
        form_decode(notice)
    }
}

fn form_decode(s: &str) -> String {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&format!("n={s}")).unwrap_or_default();
    pairs.into_iter().map(|(_, v)| v).collect()
}

async fn audit(pool: &PgPool) -> Vec<(String, String, Option<String>, String)> {
    sqlx::query_as("SELECT actor, action, target, outcome FROM dashboard_audit ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn ping(pool: &PgPool, p: Ping, opts: EnqueueOptions) -> JobId {
    JobClient::new(pool.clone())
        .enqueue(&p, opts)
        .await
        .unwrap()
        .id
}

const PAGES: &[&str] = &[
    "/dashboard",
    "/dashboard/jobs",
    "/dashboard/jobs?state=discarded&queue=default&kind=ping",
    "/dashboard/schedules",
    "/dashboard/newsletters",
    "/dashboard/mail",
    "/dashboard/mail?failures=1",
    "/dashboard/mail/inbox",
    "/dashboard/mail/inbox?quarantined=1",
    "/dashboard/mail/bounces",
    "/dashboard/audit",
];

#[sqlx::test(migrations = false)]
async fn every_page_asks_for_a_login_then_answers_with_strict_headers(pool: PgPool) {
    migrate(&pool).await;
    let served = serve(&pool, token_config()).await;
    for path in PAGES {
        let r = served.client.get(served.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path} without login");
        assert_eq!(r.headers()[LOCATION], "/dashboard/login");
    }
    // The stylesheet is no secret.
    let css = served
        .client
        .get(served.url("/dashboard/static/dashboard.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    let s = served.login().await;
    for path in PAGES {
        let r = served
            .client
            .get(served.url(path))
            .header(COOKIE, &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert!(h[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        let body = r.text().await.unwrap();
        assert!(!body.contains(TOKEN), "{path} shows the token");
        assert!(!body.contains("<script"), "{path} has script");
    }
    // Unknown ids and filters get a clear 4xx, not a 500.
    for (path, want) in [
        ("/dashboard/jobs/01NOSUCHJOB", StatusCode::NOT_FOUND),
        ("/dashboard/jobs?state=exploded", StatusCode::BAD_REQUEST),
        ("/dashboard/newsletters/not-a-uuid", StatusCode::BAD_REQUEST),
        (
            "/dashboard/mail/messages/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = served.get(&s.cookie, path).await;
        assert_eq!(status, want, "{path}: {body}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_wrong_secret_gets_401_and_each_retry_from_that_address_waits_longer(pool: PgPool) {
    migrate(&pool).await;
    use argon2::password_hash::PasswordHasher;
    let hash = argon2::Argon2::default()
        .hash_password(b"wandelen in de zon")
        .unwrap()
        .to_string();
    let served = serve(
        &pool,
        DashboardConfig {
            token: Some(TOKEN.into()),
            password_hash: Some(hash),
            secure_cookie: None,
        },
    )
    .await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let r = served.login_as("not the token", "Mallory").await;
        took.push(started.elapsed());
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(SET_COOKIE).is_none());
        assert!(r.text().await.unwrap().contains("Wrong token or password"));
    }
    // The first try is answered at once; then 250 ms, then 500 ms.
    assert!(took[1] >= Duration::from_millis(250), "{took:?}");
    assert!(took[2] >= Duration::from_millis(500), "{took:?}");
    assert!(took[2] > took[1], "{took:?}");

    // The password works too, and the cookie is strict (no Secure on loopback).
    let r = served.login_as("wandelen in de zon", "Beheerder").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for part in [
        "dkl_dashboard=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/dashboard",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    // Only the session id's digest is stored.
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("dkl_dashboard=");
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dashboard_sessions WHERE id_sha256 = $1 OR id_sha256 = $2",
    )
    .bind(id)
    .bind(dkl_worker::dashboard::auth::session_digest(id))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    let ids: Vec<String> = sqlx::query_scalar("SELECT id_sha256 FROM dashboard_sessions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!ids.contains(&id.to_string()));

    let lines = audit(&pool).await;
    let refused = lines
        .iter()
        .filter(|(actor, action, _, outcome)| {
            actor == "Mallory" && action == "login" && outcome == "refused"
        })
        .count();
    assert_eq!(refused, 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|(a, act, _, o)| a == "Beheerder (password)" && act == "login" && o == "ok")
    );
}

#[sqlx::test(migrations = false)]
async fn actions_are_refused_without_login_csrf_token_or_same_origin_and_audited(pool: PgPool) {
    migrate(&pool).await;
    let served = serve(&pool, token_config()).await;
    let id = ping(
        &pool,
        Ping {
            permanent_error: Some("kapot".into()),
            ..Default::default()
        },
        EnqueueOptions::default(),
    )
    .await;
    dkl_tests::work_one(
        &pool,
        dkl_worker::handlers::registry(
            &pool,
            &dkl_shared::config::Config::from_lookup(|_| None).unwrap(),
        ),
        "default",
    )
    .await;
    assert_eq!(
        dkl_tests::job(&pool, &id).await.status.to_string(),
        "Killed"
    );
    let path = format!("/dashboard/jobs/{}/retry", id.0);

    // No action on GET.
    let s = served.login().await;
    let (status, _) = served.get(&s.cookie, &path).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // No login.
    let anonymous = Session {
        cookie: String::new(),
        csrf: s.csrf.clone(),
    };
    let r = served.post(&anonymous, &path, Some(&s.csrf)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // No CSRF token, or another session's.
    let r = served.post(&s, &path, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let other = served.login().await;
    let r = served.post(&s, &path, Some(&other.csrf)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another site's form, even with the token.
    let r = served
        .client
        .post(served.url(&path))
        .header(COOKIE, &s.cookie)
        .header("origin", "https://evil.example")
        .form(&[("csrf", s.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        dkl_tests::job(&pool, &id).await.status.to_string(),
        "Killed",
        "nothing refused changed the job"
    );

    // With all of it, the job is retried.
    let notice = served.act(&s, &path).await;
    assert!(notice.contains("pending again"), "{notice}");
    assert_eq!(
        dkl_tests::job(&pool, &id).await.status.to_string(),
        "Pending"
    );

    let lines = audit(&pool).await;
    let of_job: Vec<_> = lines
        .iter()
        .filter(|(_, action, target, _)| {
            action == "job.retry" && target.as_deref() == Some(id.0.as_str())
        })
        .map(|(actor, _, _, outcome)| (actor.as_str(), outcome.as_str()))
        .collect();
    assert_eq!(
        of_job,
        vec![
            ("Tester (token)", "refused"),
            ("Tester (token)", "refused"),
            ("Tester (token)", "refused"),
            ("Tester (token)", "ok"),
        ],
        "refusals with a session are audited; without one only logged"
    );

    // Logging out ends the session for good.
    served.act(&s, "/dashboard/logout").await;
    let r = served
        .client
        .get(served.url("/dashboard"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[sqlx::test(migrations = false)]
async fn job_schedule_and_admin_row_buttons_do_what_they_say(pool: PgPool) {
    migrate(&pool).await;
    dkl_tests::disable_default_schedules(&pool).await;
    let served = serve(&pool, token_config()).await;
    let s = served.login().await;

    // Cancel a job that waits for its time; run another one now.
    let later = EnqueueOptions::at(chrono::Utc::now() + chrono::Duration::hours(1));
    let waiting = ping(&pool, Ping::default(), later.clone()).await;
    let run_me = ping(&pool, Ping::default(), later).await;
    let page = served
        .get(&s.cookie, &format!("/dashboard/jobs/{}", waiting.0))
        .await
        .1;
    assert!(
        page.contains("/cancel\"") && page.contains("/run-now\"") && !page.contains("/retry\""),
        "{page}"
    );
    let notice = served
        .act(&s, &format!("/dashboard/jobs/{}/cancel", waiting.0))
        .await;
    assert!(notice.contains("cancelled"), "{notice}");
    let notice = served
        .act(&s, &format!("/dashboard/jobs/{}/run-now", run_me.0))
        .await;
    assert!(notice.contains("now due"), "{notice}");
    let due: bool = sqlx::query_scalar("SELECT run_at <= now() FROM apalis.jobs WHERE id = $1")
        .bind(&run_me.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(due);
    let cancelled = served
        .get(&s.cookie, "/dashboard/jobs?state=cancelled")
        .await
        .1;
    assert!(cancelled.contains(&waiting.0) && !cancelled.contains(&run_me.0));

    // A page can be old: what the job's state does not allow is refused
    // by the server too, and said.
    let notice = served
        .act(&s, &format!("/dashboard/jobs/{}/run-now", waiting.0))
        .await;
    assert!(notice.contains("is cancelled"), "{notice}");
    let (status, _) = served
        .get(&s.cookie, "/dashboard/jobs/bad%0d%0aid/cancel")
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let r = served
        .post(&s, "/dashboard/jobs/bad%0d%0aid/cancel", Some(&s.csrf))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A password-reset mail's job carries a live link: the page hides it.
    let reset = JobClient::new(pool.clone())
        .enqueue_raw(
            "send_email",
            "mail",
            &serde_json::json!({
                "to": "anna@example.org",
                "template": "password_reset_email",
                "variables": {"naam": "Anna", "reset_link": "https://dkl.example/reset?token=geheim-123", "geldig_tot": "morgen"}
            }),
            8,
            EnqueueOptions::at(chrono::Utc::now() + chrono::Duration::hours(1)),
        )
        .await
        .unwrap()
        .id;
    let page = served
        .get(&s.cookie, &format!("/dashboard/jobs/{}", reset.0))
        .await
        .1;
    assert!(
        page.contains("password_reset_email") && page.contains("anna@example.org"),
        "{page}"
    );
    assert!(
        !page.contains("geheim-123"),
        "the reset link is shown: {page}"
    );
    assert!(page.contains("(hidden)"), "{page}");

    // Pause, resume and run a schedule.
    served
        .act(&s, "/dashboard/schedules/retention/resume")
        .await;
    let notice = served.act(&s, "/dashboard/schedules/retention/pause").await;
    assert!(notice.contains("paused"), "{notice}");
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM job_schedules WHERE name = 'retention'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!enabled);
    served
        .act(&s, "/dashboard/schedules/retention/resume")
        .await;
    let notice = served
        .act(&s, "/dashboard/schedules/retention/run-now")
        .await;
    assert!(notice.contains("enqueued job"), "{notice}");
    let by: String = sqlx::query_scalar("SELECT scheduler_id FROM job_schedule_runs WHERE outcome = 'manual' ORDER BY created_at DESC LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap_or_default();
    assert!(by.contains("Tester"), "{by}");
    let listed = served
        .get(&s.cookie, "/dashboard/jobs?schedule=retention")
        .await
        .1;
    assert!(listed.contains("apply_retention"), "{listed}");
    let notice = served.act(&s, "/dashboard/schedules/no-such/pause").await;
    assert!(notice.contains("No schedule"), "{notice}");

    // Cancel a pending admin row.
    let row: Uuid = sqlx::query_scalar(
        "INSERT INTO scheduled_jobs (job_kind, payload, run_at, created_by) VALUES ('ping', '{}', now() + interval '1 day', 'psql') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        served
            .get(&s.cookie, "/dashboard/schedules")
            .await
            .1
            .contains(&row.to_string())
    );
    let notice = served
        .act(&s, &format!("/dashboard/scheduled-jobs/{row}/cancel"))
        .await;
    assert!(notice.contains("cancelled"), "{notice}");
    let status: String = sqlx::query_scalar("SELECT status FROM scheduled_jobs WHERE id = $1")
        .bind(row)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT action FROM dashboard_audit WHERE outcome = 'ok' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for a in [
        "job.cancel",
        "job.run_now",
        "schedule.pause",
        "schedule.resume",
        "schedule.run_now",
        "scheduled_job.cancel",
    ] {
        assert!(
            actions.contains(&a.to_string()),
            "{a} not audited: {actions:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn newsletter_buttons_pause_resume_and_cancel(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         SELECT 'Lid ' || i, 'lid' || i || '@example.org', true FROM generate_series(1, 5) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = dkl_worker::store::newsletters::create(&pool, "Nieuws", "Beste lezer", None)
        .await
        .unwrap();
    // Recipients fixed; no worker runs, so it stays mid-send.
    dkl_worker::store::newsletters::start(&pool, store)
        .await
        .unwrap();
    let served = serve(&pool, token_config()).await;
    let s = served.login().await;
    let page = served
        .get(&s.cookie, &format!("/dashboard/newsletters/{store}"))
        .await
        .1;
    assert!(
        page.contains("0 / 5") && page.contains("/pause\""),
        "{page}"
    );
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM newsletters WHERE id = $1")
            .bind(store)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    served
        .act(&s, &format!("/dashboard/newsletters/{store}/pause"))
        .await;
    assert_eq!(status().await, "paused");
    let page = served.get(&s.cookie, "/dashboard/newsletters").await.1;
    assert!(page.contains("/resume\""), "{page}");
    served
        .act(&s, &format!("/dashboard/newsletters/{store}/resume"))
        .await;
    assert_eq!(status().await, "sending");
    served
        .act(&s, &format!("/dashboard/newsletters/{store}/cancel"))
        .await;
    assert_eq!(status().await, "cancelled");
    // What the table refuses is said, not hidden.
    let notice = served
        .act(&s, &format!("/dashboard/newsletters/{store}/resume"))
        .await;
    assert!(notice.starts_with("Not done"), "{notice}");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM dashboard_audit WHERE action = 'newsletter.resume' AND outcome = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 1);
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mail")
        .join(name)
}

async fn import(pool: &PgPool, name: &str, max_bytes: u64) -> Uuid {
    dkl_worker::import::import_path(pool, "info", &fixture(name), max_bytes, &mut |_| {})
        .await
        .unwrap();
    sqlx::query_scalar("SELECT id FROM incoming_emails ORDER BY created_at DESC LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_message_page_frames_its_html_so_no_script_can_run(pool: PgPool) {
    migrate(&pool).await;
    let id = import(
        &pool,
        "mailparser-thirdparty-019-nested-mixed-alt-related.eml",
        10 << 20,
    )
    .await;
    let served = serve(&pool, token_config()).await;
    let s = served.login().await;
    let inbox = served.get(&s.cookie, "/dashboard/mail/inbox").await.1;
    assert!(
        inbox.contains(&format!("/dashboard/mail/messages/{id}")),
        "{inbox}"
    );
    let (status, page) = served
        .get(&s.cookie, &format!("/dashboard/mail/messages/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("id=\"message-headers\"") && page.contains("Attachments"),
        "{page}"
    );
    assert!(page.contains("<iframe class=\"message\""), "{page}");

    // Even if HTML with script got past the sanitiser, the page cannot run it:
    // it is an escaped attribute of a frame sandboxed without scripts, under a
    // policy that allows no script at all.
    sqlx::query("UPDATE incoming_emails SET html_body = $2 WHERE id = $1")
        .bind(id)
        .bind(r#"<p>Hallo</p><script>document.title = "pwned"</script><img src=x onerror="alert(1)">"#)
        .execute(&pool)
        .await
        .unwrap();
    let (_, page) = served
        .get(&s.cookie, &format!("/dashboard/mail/messages/{id}"))
        .await;
    assert!(!page.contains("<script"), "raw script in the page");
    assert!(!page.contains("onerror=\""), "raw handler in the page");
    assert!(
        page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"),
        "{page}"
    );
    let frame = page
        .split("<iframe")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    assert!(frame.contains("sandbox=\"\""), "{frame}");
}

#[sqlx::test(migrations = false)]
async fn quarantined_messages_are_listed_apart_and_open_with_the_reason(pool: PgPool) {
    migrate(&pool).await;
    let ok = import(&pool, "mailparser-legacy-012-cp1252-qp.eml", 10 << 20).await;
    // Over the size limit: only its header is kept, quarantined.
    let big = import(
        &pool,
        "mailparser-thirdparty-019-nested-mixed-alt-related.eml",
        512,
    )
    .await;
    let served = serve(&pool, token_config()).await;
    let s = served.login().await;
    let listed = served
        .get(&s.cookie, "/dashboard/mail/inbox?quarantined=1")
        .await
        .1;
    assert!(
        listed.contains(&big.to_string()) && !listed.contains(&ok.to_string()),
        "{listed}"
    );
    let page = served
        .get(&s.cookie, &format!("/dashboard/mail/messages/{big}"))
        .await
        .1;
    assert!(page.contains("Quarantined: too large to import"), "{page}");
}

#[sqlx::test(migrations = false)]
async fn lists_page_by_keyset_and_the_send_log_shows_failures_first(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let jobs: Vec<Ping> = (0..120).map(|_| Ping::default()).collect();
    let ids = client.enqueue_many(&jobs).await.unwrap();
    let served = serve(&pool, token_config()).await;
    let s = served.login().await;
    let mut seen = Vec::new();
    let mut path = "/dashboard/jobs?kind=ping".to_string();
    for _ in 0..10 {
        let page = served.get(&s.cookie, &path).await.1;
        seen.extend(
            page.split("data-job=\"")
                .skip(1)
                .map(|p| p.split('"').next().unwrap().to_string()),
        );
        match page.split("<a href=\"/dashboard/jobs?").nth(1) {
            Some(rest) if rest.contains("before=") => {
                let query = rest
                    .split('"')
                    .next()
                    .unwrap()
                    .replace("&#38;", "&")
                    .replace("&amp;", "&");
                path = format!("/dashboard/jobs?{query}");
            }
            _ => break,
        }
    }
    // Ids are ULIDs: in creation order to the millisecond, so newest first
    // is by id, descending.
    let mut want: Vec<String> = ids.iter().map(|i| i.0.clone()).collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, want, "every job once, newest first, over three pages");

    // 200 sent and 3 failed messages: the failures are on top.
    sqlx::query(
        "INSERT INTO verzonden_emails (recipient_email, subject, status, sent_at, error_message)
         SELECT 'lid' || i || '@example.org', 'Bericht ' || i,
                CASE WHEN i % 70 = 0 THEN 'failed' ELSE 'sent' END,
                now() - make_interval(mins => i),
                CASE WHEN i % 70 = 0 THEN '550 5.1.1 mailbox unknown (' || i || ')' END
           FROM generate_series(1, 210) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let page = served.get(&s.cookie, "/dashboard/mail").await.1;
    let failures = page
        .split("id=\"failures\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert_eq!(failures.matches("data-send=").count(), 3, "{failures}");
    assert!(failures.contains("mailbox unknown (70)"));
    let log = page.split("id=\"send-log\"").nth(1).unwrap();
    assert_eq!(log.matches("data-send=").count(), 50);
    assert!(page.contains("before_at="), "a next page");
    let overview = served.get(&s.cookie, "/dashboard").await.1;
    assert!(overview.contains("<svg class=\"chart\""), "{overview}");
}

#[sqlx::test(migrations = false)]
async fn each_state_filter_lists_exactly_the_jobs_job_status_gives_that_state(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let ids = client
        .enqueue_many(&(0..14).map(|_| Ping::default()).collect::<Vec<_>>())
        .await
        .unwrap();
    // Two jobs in each state, written as the engine writes them.
    let states = [
        "run_at = now() - interval '1 minute'",
        "run_at = now() + interval '1 hour'",
        "run_at = now() + interval '1 hour', attempts = 2",
        "status = 'Running', attempts = 1, lock_at = now()",
        "status = 'Done', attempts = 1, done_at = now()",
        "status = 'Killed', attempts = 5, done_at = now(), last_error = 'kapot'",
        "status = 'Killed', done_at = now(), cancelled_at = now()",
    ];
    for (i, set) in states.iter().enumerate() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE apalis.jobs SET {set} WHERE id = ANY($1)"
        )))
        .bind(vec![ids[2 * i].0.clone(), ids[2 * i + 1].0.clone()])
        .execute(&pool)
        .await
        .unwrap();
    }
    for state in dkl_shared::monitor::STATES {
        let want: Vec<String> = sqlx::query_scalar(
            "SELECT job_id FROM job_status WHERE state = $1 ORDER BY job_id DESC",
        )
        .bind(state)
        .fetch_all(&pool)
        .await
        .unwrap();
        let query = dkl_worker::store::jobs::JobQuery {
            state: Some(state.to_string()),
            kind: Some("ping".into()),
            limit: 50,
            ..Default::default()
        };
        let got: Vec<String> = dkl_worker::store::jobs::page(&pool, &query)
            .await
            .unwrap()
            .into_iter()
            .map(|j| {
                assert_eq!(j.state, *state);
                j.job_id
            })
            .collect();
        assert_eq!(got.len(), 2, "{state}");
        assert_eq!(got, want, "{state}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_session_outlives_a_restart_but_not_a_changed_token(pool: PgPool) {
    migrate(&pool).await;
    let first = serve(&pool, token_config()).await;
    let s = first.login().await;
    // The same token after a restart: still logged in.
    let again = serve(&pool, token_config()).await;
    let (status, _) = again.get(&s.cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    // A new token (the old one leaked): every session of the old one is over.
    let rotated = serve(
        &pool,
        DashboardConfig {
            token: Some("another-token-after-rotation-0123456789".into()),
            password_hash: None,
            secure_cookie: None,
        },
    )
    .await;
    let r = rotated
        .client
        .get(rotated.url("/dashboard"))
        .header(COOKIE, &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the old session is over");
    // Unused for longer than the idle limit: over too.
    sqlx::query("UPDATE dashboard_sessions SET last_seen_at = now() - interval '3 hours'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, _) = again.get(&s.cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "an idle session is over");
}
