//! `deploy/alerts.yml` stays true to the code: it parses as YAML (PyYAML, installed with
//! moto by scripts/test.sh), every rule has a name, an expression, a known severity and the
//! text a person on call reads, and every metric and label value an expression names is one
//! the service registers — so renaming a metric without its alert fails here, not in
//! production when the alert silently never fires.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

const RULES: &str = "deploy/alerts.yml";

/// The rules file as JSON, through Python's YAML parser; `None` (skipped) without one,
/// except under CI.
fn rules_as_json() -> Option<serde_json::Value> {
    let python = std::env::var("MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            RULES,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let missing = |why: String| {
        assert!(
            !support::process::strict(),
            "{python} with PyYAML is required with CI=true: {why}"
        );
        eprintln!("SKIPPED: no Python with PyYAML ({why})");
        None
    };
    match output {
        Ok(output) if output.status.success() => {
            Some(serde_json::from_slice(&output.stdout).expect("JSON from json.dump"))
        }
        Ok(output) => {
            let why = String::from_utf8_lossy(&output.stderr).into_owned();
            if why.contains("No module named 'yaml'") {
                return missing(why);
            }
            panic!("{RULES} does not parse: {why}")
        }
        Err(error) => missing(error.to_string()),
    }
}

/// Every string literal in the crate's sources, without its quotes.
fn source_literals() -> BTreeSet<String> {
    fn walk(dir: &Path, literals: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, literals);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                literals.extend(text.split('"').skip(1).step_by(2).map(str::to_owned));
            }
        }
    }
    let mut literals = BTreeSet::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut literals,
    );
    literals
}

/// The metric names an expression uses (`token_service_...`).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices("token_service_")
        .map(|(start, _)| {
            let rest = &expr[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// The label values an expression matches on (`name="value"`, `name=~"a|b"`).
fn label_values(expr: &str) -> Vec<&str> {
    expr.split('{')
        .skip(1)
        .filter_map(|selector| selector.split('}').next())
        .flat_map(|selector| selector.split(','))
        .filter_map(|matcher| matcher.split_once('"'))
        .flat_map(|(_, quoted)| quoted.trim_end_matches('"').split('|'))
        .collect()
}

#[test]
fn every_rule_is_complete_and_names_only_what_the_service_exports() {
    let Some(rules) = rules_as_json() else {
        return;
    };
    let literals = source_literals();
    let groups = rules["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    let mut names = BTreeSet::new();
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
    {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(name.to_owned()), "{name} twice");
        assert!(name.starts_with("TokenService"), "{name}");
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["page", "ticket", "security"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or("");
            assert!(!text.trim().is_empty(), "{name}: no {annotation}");
        }
        if let Some(wait) = rule.get("for") {
            humantime::parse_duration(wait.as_str().unwrap()).expect("a duration in `for`");
        }
        let expr = rule["expr"].as_str().expect("an expression");
        let metrics = metric_names(expr);
        assert!(!metrics.is_empty(), "{name} reads no metric of the service");
        for metric in metrics {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .filter(|base| literals.contains(*base))
                .unwrap_or(metric);
            assert!(
                literals.contains(family),
                "{name}: no metric {metric} is registered"
            );
        }
        for value in label_values(expr) {
            assert!(
                literals.contains(value),
                "{name}: no label takes the value {value:?}"
            );
        }
    }
    assert!(names.len() >= 10, "{names:?}");
}

#[test]
fn the_expression_readers_find_names_and_values() {
    let expr = r#"sum by (instance) (rate(token_service_grpc_requests_total{code=~"UNAVAILABLE|INTERNAL",method="GenerateTokens"}[5m])) / token_service_x_bucket"#;
    assert_eq!(
        metric_names(expr),
        [
            "token_service_grpc_requests_total",
            "token_service_x_bucket"
        ]
    );
    assert_eq!(
        label_values(expr),
        ["UNAVAILABLE", "INTERNAL", "GenerateTokens"]
    );
}
