//! Which variables a template uses, to check them against the names a
//! template row declares (`email_templates.variables`).

use std::collections::BTreeSet;

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};

/// Helpers whose block is rendered with a new context (`this` is an item),
/// so names inside it are not the template's variables.
const SCOPING_HELPERS: &[&str] = &["each", "with"];

/// The top-level variable names `source` reads (the first segment of each
/// path, outside `#each`/`#with` blocks). Fails when it does not parse.
pub fn used_variables(source: &str) -> Result<BTreeSet<String>, handlebars::TemplateError> {
    let template = Template::compile(source)?;
    let mut names = BTreeSet::new();
    collect_template(&template, &mut names);
    Ok(names)
}

fn collect_template(template: &Template, names: &mut BTreeSet<String>) {
    for element in &template.elements {
        collect_element(element, names);
    }
}

fn collect_element(element: &TemplateElement, names: &mut BTreeSet<String>) {
    match element {
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => collect_helper(h, names),
        _ => {}
    }
}

fn collect_helper(h: &HelperTemplate, names: &mut BTreeSet<String>) {
    // `{{naam}}` is a helper template with a path for a name and no params.
    if let Parameter::Path(path) = &h.name {
        collect_path(path, names);
    }
    for param in h.params.iter().chain(h.hash.values()) {
        collect_param(param, names);
    }
    let scoping = matches!(&h.name, Parameter::Name(n) if SCOPING_HELPERS.contains(&n.as_str()));
    if !scoping && let Some(t) = &h.template {
        collect_template(t, names);
    }
    if let Some(t) = &h.inverse {
        collect_template(t, names);
    }
}

fn collect_param(param: &Parameter, names: &mut BTreeSet<String>) {
    match param {
        Parameter::Path(path) => collect_path(path, names),
        Parameter::Subexpression(sub) => collect_element(sub.as_element(), names),
        _ => {}
    }
}

fn collect_path(path: &Path, names: &mut BTreeSet<String>) {
    if let Path::Relative((segs, _)) = path
        && let Some(PathSeg::Named(first)) = segs.first()
        && first != "this"
        && !super::helpers::NAMES.contains(&first.as_str())
    {
        names.insert(first.clone());
    }
}
