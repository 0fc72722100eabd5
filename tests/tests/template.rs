//! The SAM template against the code: every setting the functions read is one a deployed
//! stack sets, from a parameter or a value, so none needs a template edit to be used.

use std::collections::BTreeMap;

use herald_tests::{repo_file, repo_root};

/// The `HERALD_*` names quoted in these source files.
fn settings_read(files: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for text in files {
        for (at, _) in text.match_indices("\"HERALD_") {
            let rest = &text[at + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if rest[name.len()..].starts_with('"') && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

/// Every `.rs` file of a folder, and of its folders.
fn sources(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines of the YAML mapping at `path` (keys nested by indentation), without blank
/// lines and comments. Enough YAML for the template's block mappings.
fn block<'a>(lines: &[&'a str], path: &[&str]) -> Vec<&'a str> {
    let mut lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    for key in path {
        let level = lines.iter().map(|l| indent(l)).min().unwrap_or(0);
        let at = lines
            .iter()
            .position(|l| indent(l) == level && l.trim_end() == format!("{}{key}:", " ".repeat(level)))
            .unwrap_or_else(|| panic!("template.yaml has no {path:?} ({key} missing)"));
        lines = lines[at + 1..]
            .iter()
            .copied()
            .take_while(|l| indent(l) > level)
            .collect();
    }
    lines
}

/// The keys of the mapping at `path`, with their values as written.
fn entries(lines: &[&str], path: &[&str]) -> BTreeMap<String, String> {
    let lines = block(lines, path);
    let level = lines.iter().map(|l| indent(l)).min().unwrap_or(0);
    lines
        .iter()
        .filter(|l| indent(l) == level)
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn every_setting_the_functions_read_is_set_by_the_template() {
    let template = repo_file("template.yaml");
    let lines: Vec<&str> = template.lines().collect();
    let parameters = entries(&lines, &["Parameters"]);
    let resources = entries(&lines, &["Resources"]);
    let global = entries(&lines, &["Globals", "Function", "Environment", "Variables"]);
    let shared_config = repo_file("shared/src/config.rs");

    for (function, resource) in [("executor", "ExecutorFunction"), ("scheduler", "SchedulerFunction")] {
        let mut files = sources(&repo_root().join("functions").join(function).join("src"));
        files.push(shared_config.clone());
        let read = settings_read(&files);
        assert!(read.len() >= 5, "{function} reads {read:?}");
        let mut set = global.clone();
        set.extend(entries(
            &lines,
            &["Resources", resource, "Properties", "Environment", "Variables"],
        ));

        // WHEN a setting the function reads is missing from its environment in the template
        let missing: Vec<&String> = read.iter().filter(|name| !set.contains_key(*name)).collect();
        // THEN the test names it
        assert!(missing.is_empty(), "{resource} does not set {missing:?}");

        // AND every value comes from a parameter, a resource, a condition or is written out
        for name in &read {
            let value = &set[name];
            assert!(!value.is_empty(), "{resource}: {name} has no value");
            if let Some(target) = value.strip_prefix("!Ref ") {
                assert!(
                    parameters.contains_key(target) || resources.contains_key(target),
                    "{resource}: {name} refers to {target}, which the template does not define"
                );
            }
        }
    }
}

#[test]
fn webhook_roots_are_a_parameter_of_the_stack() {
    let template = repo_file("template.yaml");
    let lines: Vec<&str> = template.lines().collect();
    let roots = entries(&lines, &["Parameters", "WebhookRoots"]);
    assert_eq!(roots.get("Type").map(String::as_str), Some("String"));
    assert_eq!(roots.get("Default").map(String::as_str), Some("\"\""));
    let env = entries(
        &lines,
        &[
            "Resources",
            "ExecutorFunction",
            "Properties",
            "Environment",
            "Variables",
        ],
    );
    assert_eq!(
        env.get("HERALD_WEBHOOK_ROOTS").map(String::as_str),
        Some("!Ref WebhookRoots")
    );
}

/// The alarms of `resources`: each one's namespace, metric, and the lines of its dimensions.
fn alarms<'a>(lines: &[&'a str], resources: &BTreeMap<String, String>) -> Vec<(String, String, String, Vec<&'a str>)> {
    resources
        .keys()
        .filter(|name| entries(lines, &["Resources", name.as_str()])["Type"] == "AWS::CloudWatch::Alarm")
        .map(|name| {
            let props = entries(lines, &["Resources", name.as_str(), "Properties"]);
            let dimensions = block(lines, &["Resources", name.as_str(), "Properties", "Dimensions"]);
            let notify = "!If [AlarmsNotify, [!Ref AlarmTopicArn], !Ref AWS::NoValue]";
            for actions in ["AlarmActions", "OKActions"] {
                assert_eq!(props[actions], notify, "{name}: {actions}");
            }
            (
                name.clone(),
                props["Namespace"].clone(),
                props["MetricName"].clone(),
                dimensions,
            )
        })
        .collect()
}

#[test]
fn alarms_watch_the_dead_letter_queues_the_functions_and_herald_metrics() {
    let template = repo_file("template.yaml");
    let lines: Vec<&str> = template.lines().collect();
    let resources = entries(&lines, &["Resources"]);
    let alarms = alarms(&lines, &resources);
    let watched = |namespace: &str, metric: &str, dimension: &str| {
        alarms.iter().any(|(_, ns, m, dims)| {
            ns == namespace && m == metric && dims.iter().any(|l| l.trim() == format!("Value: {dimension}"))
        })
    };

    // Every queue a redrive policy sends to: messages there are an alarm.
    let dead_letter_queues: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("deadLetterTargetArn: !GetAtt "))
        .filter_map(|target| target.strip_suffix(".Arn"))
        .collect();
    assert_eq!(dead_letter_queues, ["DeadLetterQueue", "ReceiptsDeadLetterQueue"]);
    for queue in dead_letter_queues {
        let dimension = format!("!GetAtt {queue}.QueueName");
        assert!(
            watched("AWS/SQS", "ApproximateNumberOfMessagesVisible", &dimension),
            "no alarm on {queue}"
        );
    }
    // Both functions' errors.
    for function in ["SchedulerFunction", "ExecutorFunction"] {
        assert!(
            watched("AWS/Lambda", "Errors", &format!("!Ref {function}")),
            "no alarm on {function}'s errors"
        );
    }
    // Herald's own metrics, by the names the functions write, on their Function dimension.
    let unknown = herald_shared::metrics::Outcome::Unknown.name();
    assert!(watched("Herald", unknown, "!Ref ExecutorFunction"));
    let scheduler = herald_shared::metrics::SchedulerMetrics {
        oldest_due_age: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    assert!(scheduler.lines("f", 0)[0].contains("\"OldestDueAge\""));
    assert!(watched("Herald", "OldestDueAge", "!Ref SchedulerFunction"));
    let oldest = entries(&lines, &["Resources", "OldestDueAgeAlarm", "Properties"]);
    assert_eq!(oldest["Threshold"], "!Ref OldestDueAgeAlarmSeconds");

    // The topic is optional: actions only when one is given.
    let parameters = entries(&lines, &["Parameters"]);
    assert!(parameters.contains_key("OldestDueAgeAlarmSeconds"));
    let topic = entries(&lines, &["Parameters", "AlarmTopicArn"]);
    assert_eq!(topic.get("Default").map(String::as_str), Some("\"\""));
    let conditions = entries(&lines, &["Conditions"]);
    assert_eq!(conditions["AlarmsNotify"], "!Not [!Equals [!Ref AlarmTopicArn, \"\"]]");
}

#[test]
fn both_functions_log_json() {
    let template = repo_file("template.yaml");
    let lines: Vec<&str> = template.lines().collect();
    let logging = entries(&lines, &["Globals", "Function", "LoggingConfig"]);
    assert_eq!(logging.get("LogFormat").map(String::as_str), Some("JSON"));
    for function in ["SchedulerFunction", "ExecutorFunction"] {
        let props = entries(&lines, &["Resources", function, "Properties"]);
        assert!(!props.contains_key("LoggingConfig"), "{function} sets its own");
    }
}
