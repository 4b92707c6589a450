use serde_json::json;

use super::*;

fn template(subject: &str, html: &str, text: Option<&str>) -> MailTemplate {
    MailTemplate {
        name: "test".into(),
        subject: subject.into(),
        html: html.into(),
        text: text.map(Into::into),
    }
}

#[test]
fn a_missing_variable_is_an_error_that_names_it() {
    let t = template("Hallo {{naam}}", "<p>{{naam}} {{achternaam}}</p>", None);
    let err = Renderer::new()
        .render(&t, &json!({"naam": "Anna"}))
        .unwrap_err();
    assert_eq!(
        err,
        TemplateError::MissingVariable {
            template: "test".into(),
            part: Part::Html,
            variable: "achternaam".into()
        }
    );
    assert!(
        err.to_string().contains("variable `achternaam` is missing"),
        "{err}"
    );
}

#[test]
fn values_are_escaped_in_html_only() {
    let t = template(
        "Over {{onderwerp}}",
        "<p>{{onderwerp}}</p>",
        Some("Onderwerp: {{onderwerp}}"),
    );
    let mail = Renderer::new()
        .render(&t, &json!({"onderwerp": "<script>alert(1)</script> & co"}))
        .unwrap();
    assert_eq!(
        mail.html,
        "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</p>"
    );
    assert!(!mail.html.contains("<script>"));
    assert_eq!(mail.text, "Onderwerp: <script>alert(1)</script> & co");
    assert_eq!(mail.subject, "Over <script>alert(1)</script> & co");
}

#[test]
fn a_subject_with_a_line_break_is_refused() {
    let t = template("Hallo {{naam}}", "<p>x</p>", None);
    for naam in ["Anna\r\nBcc: iedereen@example.org", "Anna\nX", "Anna\rX"] {
        let err = Renderer::new()
            .render(&t, &json!({"naam": naam}))
            .unwrap_err();
        assert_eq!(
            err,
            TemplateError::HeaderInjection {
                template: "test".into()
            },
            "{naam:?}"
        );
    }
}

#[test]
fn text_is_derived_from_html_when_there_is_no_text_part() {
    let t = template(
        "x",
        "<h1>Welkom</h1><p>Beste {{naam}},</p><p>Tot <a href=\"https://dkl.example/\">ziens</a>.</p>",
        None,
    );
    let mail = Renderer::new()
        .render(&t, &json!({"naam": "Anna"}))
        .unwrap();
    assert!(
        mail.text.contains("Welkom") && mail.text.contains("Beste Anna,"),
        "{}",
        mail.text
    );
    assert!(
        mail.text.contains("https://dkl.example/"),
        "links are kept: {}",
        mail.text
    );
    assert!(!mail.text.contains("<p>"), "{}", mail.text);
}

#[test]
fn a_broken_template_is_refused_with_its_part_and_line() {
    let t = template(
        "x",
        "<p>regel 1</p>\n<p>{{#if naam}}open</p>\n<p>regel 3</p>",
        None,
    );
    match Renderer::new().check(&t).unwrap_err() {
        TemplateError::Syntax { part, line, .. } => {
            assert_eq!(part, Part::Html);
            assert!(line >= 2, "line {line}");
        }
        other => panic!("{other:?}"),
    }
    let t = template("{{naam", "<p></p>", None);
    assert!(matches!(
        Renderer::new().check(&t),
        Err(TemplateError::Syntax {
            part: Part::Subject,
            line: 1,
            ..
        })
    ));
}

#[test]
fn datum_writes_dutch_dates_in_amsterdam_time() {
    let t = template(
        "{{datum start}}",
        "<p>{{datum start tijd=true}}</p>",
        Some("{{datum dag}} {{huidig_jaar}}"),
    );
    let mail = Renderer::new()
        .render(
            &t,
            &json!({"start": "2026-05-17T07:30:00Z", "dag": "2026-12-31"}),
        )
        .unwrap();
    assert_eq!(mail.subject, "17 mei 2026");
    assert_eq!(
        mail.html, "<p>17 mei 2026 om 09:30</p>",
        "summer time: UTC+2"
    );
    let year = chrono::Utc::now().format("%Y").to_string();
    assert_eq!(mail.text, format!("31 december 2026 {year}"));
    let err = Renderer::new()
        .render(&template("{{datum x}}", "", None), &json!({"x": "morgen"}))
        .unwrap_err();
    assert!(err.to_string().contains("`morgen` is not a date"), "{err}");
    let err = Renderer::new()
        .render(&template("{{datum x}}", "", None), &json!({}))
        .unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::MissingVariable { .. } | TemplateError::Render { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn templates_cannot_reach_files() {
    let t = template("x", "{{> /etc/passwd}}", None);
    assert!(Renderer::new().render(&t, &json!({})).is_err());
}

#[test]
fn used_variables_are_the_top_level_names() {
    let used = used_variables(
        "{{naam}} {{#if actief}}{{datum start_datum}}{{else}}{{reden}}{{/if}} {{#each items}}{{this.x}} {{y}}{{/each}} {{huidig_jaar}} {{persoon.email}}",
    )
    .unwrap();
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    assert_eq!(
        used,
        ["actief", "items", "naam", "persoon", "reden", "start_datum"]
    );
}

fn shipped() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

#[test]
fn every_shipped_template_parses_declares_its_variables_and_renders() {
    let all = files::load_dir(&shipped()).unwrap();
    let names: Vec<&str> = all.iter().map(|f| f.template.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "aanmelding_admin_email",
            "aanmelding_email",
            "auto_response",
            "contact_admin_email",
            "contact_email",
            "email_verification_email",
            "newsletter",
            "password_reset_email"
        ]
    );
    let renderer = Renderer::new();
    for f in &all {
        files::check(&renderer, f).unwrap_or_else(|e| panic!("{e}"));
        let mail = renderer.render(&f.template, &f.example).unwrap();
        assert!(
            !mail.subject.is_empty() && !mail.text.trim().is_empty(),
            "{}",
            f.template.name
        );
    }
}

#[test]
fn a_template_whose_declared_variables_differ_is_refused_with_the_names() {
    let mut f = files::load(&shipped().join("contact_email")).unwrap();
    f.variables.retain(|v| v != "bericht");
    f.variables.push("telefoon".into());
    let err = files::check(&Renderer::new(), &f).unwrap_err().to_string();
    assert!(
        err.contains("used but not declared [\"bericht\"]")
            && err.contains("declared but not used [\"telefoon\"]"),
        "{err}"
    );
}
