//! `vidfarm model eval` on a reduced prompt set, as CI runs it: a table, a JSON report, and a
//! non-zero exit under the adherence floor. Holds whatever the shipped model's quality.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vidfarm");

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["model", "eval", "--steps", "2", "--seconds", "2"]).args(args).output().unwrap()
}

#[test]
fn eval_writes_a_report_and_fails_under_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval.json");
    let passed = eval(&["--limit", "2", "--out", out.to_str().unwrap()]);
    assert!(passed.status.success(), "{}", String::from_utf8_lossy(&passed.stderr));
    let table = String::from_utf8_lossy(&passed.stdout);
    assert!(table.contains("2 prompts: adherence"), "{table}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["prompt"].as_str().is_some_and(|p| p.ends_with("background"))));
    let summary = &report["summary"];
    for key in ["adherence", "colour_accuracy", "shape_accuracy", "motion_accuracy"] {
        assert!(summary[key].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{key}: {summary}");
    }
    assert!(summary["mean_abs_frame_difference"].as_f64().is_some());

    // A floor just above what the model reached fails the command; one at it passes.
    let adherence = summary["adherence"].as_f64().unwrap();
    if adherence < 1.0 {
        let failed = eval(&["--limit", "2", "--min-adherence", &format!("{}", adherence + 0.01)]);
        assert!(!failed.status.success());
        assert!(String::from_utf8_lossy(&failed.stderr).contains("under the floor"));
    }
    assert!(eval(&["--limit", "2", "--min-adherence", &format!("{adherence}")]).status.success());
}

#[test]
fn eval_rejects_an_empty_prompt_set() {
    let output = eval(&["--limit", "0"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--limit must be at least 1"));
}
