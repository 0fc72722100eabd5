//! One result row per case and variant, the table printed at the end, and its JSON.

use serde::Serialize;

/// A measured figure, with the baseline it is compared with in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: &'static str,
    pub variant: String,
    pub figure: f64,
    pub unit: &'static str,
    /// Every run's figure, in run order; `figure` is their median.
    pub runs: Vec<f64>,
    /// The variant this one is compared with, and figure / baseline.
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
    /// What the project aims for, in words ("≥ 0.70× bare").
    pub bar: Option<String>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(case: &'static str, variant: impl Into<String>, runs: Vec<f64>, unit: &'static str) -> Self {
        Self {
            case,
            variant: variant.into(),
            figure: median(&runs),
            unit,
            runs,
            baseline: None,
            ratio: None,
            bar: None,
            note: None,
        }
    }

    /// Compares with `base` (another row of the same run).
    pub fn against(mut self, base: &Row) -> Self {
        self.baseline = Some(base.variant.clone());
        self.ratio = (base.figure > 0.0).then(|| self.figure / base.figure);
        self
    }

    pub fn bar(mut self, bar: impl Into<String>) -> Self {
        self.bar = Some(bar.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A figure with thousands separators and sensible precision.
pub fn human(x: f64) -> String {
    if x.abs() >= 100.0 {
        let n = x.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The results as a Markdown table (it reads as plain text too).
pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![
        "| case | variant | figure | unit | ratio | baseline | bar |".to_owned(),
        "| --- | --- | ---: | --- | ---: | --- | --- |".to_owned(),
    ];
    for r in rows {
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            r.variant,
            human(r.figure),
            r.unit,
            r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
            r.baseline.as_deref().unwrap_or(""),
            r.bar.as_deref().unwrap_or(""),
        ));
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| r.note.as_ref().map(|n| format!("- {} / {}: {n}", r.case, r.variant)))
        .collect();
    if !notes.is_empty() {
        lines.push(String::new());
        lines.extend(notes);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_figures() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(human(1_234_567.4), "1,234,567");
        assert_eq!(human(999.6), "1,000");
        assert_eq!(human(12.345), "12.3");
        assert_eq!(human(0.456), "0.46");
    }

    #[test]
    fn ratios_are_to_the_baseline_of_the_same_run() {
        let bare = Row::new("capture", "bare", vec![100.0, 90.0, 110.0], "tps");
        let herald = Row::new("capture", "herald", vec![70.0, 80.0, 75.0], "tps").against(&bare);
        assert_eq!(herald.ratio, Some(0.75));
        assert!(table(&[bare, herald]).contains("| capture | herald | 75.0 | tps | 0.75× | bare |"));
    }
}
