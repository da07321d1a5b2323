//! The steps a pipeline runs, whether listed in `steps` or made from
//! `sql`, with where each was written so that errors name it.

use std::borrow::Cow;

use super::{PipelineSpec, StepSpec};

/// The steps a job runs, and where each was written.
#[derive(Debug, Default)]
pub struct PlannedSteps<'a> {
    steps: Cow<'a, [StepSpec]>,
    /// The clause of `sql` each step was made from; empty for `steps`.
    clauses: Vec<&'static str>,
}

impl std::ops::Deref for PlannedSteps<'_> {
    type Target = [StepSpec];

    fn deref(&self) -> &[StepSpec] {
        &self.steps
    }
}

impl PlannedSteps<'_> {
    /// Where step `i` was written: errors about a step made from `sql`
    /// name its clause, not a step the user never wrote.
    pub fn path(&self, i: usize) -> String {
        match self.clauses.get(i) {
            Some(clause) => format!("spec.pipeline.sql ({clause})"),
            None => format!("spec.pipeline.steps[{i}]"),
        }
    }

    /// `errors` with each `spec.pipeline.steps[i].…` path replaced by
    /// [`Self::path`] when the steps came from `sql`.
    pub fn relabeled(&self, errors: Vec<String>) -> Vec<String> {
        if self.clauses.is_empty() {
            return errors;
        }
        errors.into_iter().map(|e| relabel(&e, |i| self.path(i))).collect()
    }
}

impl PipelineSpec {
    /// The steps the job runs: `steps`, or those `sql` is turned into.
    pub fn planned_steps(&self) -> Result<PlannedSteps<'_>, String> {
        match &self.sql {
            None => Ok(PlannedSteps { steps: Cow::Borrowed(&self.steps), clauses: Vec::new() }),
            Some(sql) => crate::pipeline::sql::translate(sql, self.event_time.as_ref())
                .map(|steps| {
                    let clauses = steps.iter().map(|s| s.clause).collect();
                    PlannedSteps { steps: Cow::Owned(steps.into_iter().map(|s| s.step).collect()), clauses }
                })
                .map_err(|e| format!("spec.pipeline.sql: {e}")),
        }
    }
}

/// `message` with every `spec.pipeline.steps[i]` and the path after it
/// (`.window.size`) replaced by `path(i)`.
fn relabel(message: &str, path: impl Fn(usize) -> String) -> String {
    const AT: &str = "spec.pipeline.steps[";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(AT) {
        out.push_str(&rest[..start]);
        let after = &rest[start + AT.len()..];
        let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
        match (after[..digits].parse::<usize>(), after[digits..].strip_prefix(']')) {
            (Ok(i), Some(tail)) => {
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']')))
                    .unwrap_or(tail.len());
                out.push_str(&path(i));
                rest = &tail[end..];
            }
            _ => {
                out.push_str(AT);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::relabel;

    #[test]
    fn errors_about_steps_made_from_sql_name_the_clause_and_keep_the_rest_of_the_message() {
        let path = |i: usize| ["spec.pipeline.sql (WHERE)", "spec.pipeline.sql (SELECT)"][i].to_string();
        assert_eq!(
            relabel("spec.pipeline.steps[1].select[0]: no field `x`; spec.pipeline.steps[0].filter: bad", path),
            "spec.pipeline.sql (SELECT): no field `x`; spec.pipeline.sql (WHERE): bad"
        );
        assert_eq!(relabel("spec.pipeline.steps[x]: as is", path), "spec.pipeline.steps[x]: as is");
    }
}
