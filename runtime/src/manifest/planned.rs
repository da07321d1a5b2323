//! The steps a pipeline runs, whether listed in `steps` or made from
//! `sql`, with where each was written so that errors name it.

use std::borrow::Cow;

use super::{PipelineSpec, StepKind, StepSpec};

/// The steps a job runs, and where each was written.
#[derive(Debug, Default)]
pub struct PlannedSteps<'a> {
    steps: Cow<'a, [StepSpec]>,
    /// The clause of `sql` each step was made from; empty for `steps`.
    clauses: Vec<&'static str>,
    /// The index in `spec.pipeline.streams` of the stream each step joins.
    streams: Vec<Option<usize>>,
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

    /// Where `tail` (`.intervalJoin.source.file.path`, `.temporalJoin…`) of step `i` was
    /// written: the stream's own fields under `spec.pipeline.streams[k]`,
    /// the rest in the step's clause.
    fn path_of(&self, i: usize, tail: &str) -> String {
        let stream = self.streams.get(i).copied().flatten();
        let own =
            StepKind::JOINS.iter().find_map(|j| tail.strip_prefix('.').and_then(|t| t.strip_prefix(j))).filter(|t| {
                [".source", ".schema", ".eventTimeField"]
                    .iter()
                    .any(|f| t.strip_prefix(f).is_some_and(|r| !r.starts_with(char::is_alphanumeric)))
            });
        match (stream, own) {
            (Some(k), Some(own)) => format!("spec.pipeline.streams[{k}]{own}"),
            _ => self.path(i),
        }
    }

    /// The streams of `spec.pipeline.streams` the steps join.
    pub fn joined_streams(&self) -> impl Iterator<Item = usize> + '_ {
        self.streams.iter().filter_map(|s| *s)
    }

    /// `errors` with each `spec.pipeline.steps[i].…` path replaced by
    /// where it was written when the steps came from `sql`.
    pub fn relabeled(&self, errors: Vec<String>) -> Vec<String> {
        if self.clauses.is_empty() {
            return errors;
        }
        errors.into_iter().map(|e| relabel(&e, |i, tail| self.path_of(i, tail))).collect()
    }
}

impl PipelineSpec {
    /// The steps the job runs: `steps`, or those `sql` is turned into.
    pub fn planned_steps(&self) -> Result<PlannedSteps<'_>, String> {
        match &self.sql {
            None => Ok(PlannedSteps { steps: Cow::Borrowed(&self.steps), ..PlannedSteps::default() }),
            Some(sql) => {
                let planned = crate::pipeline::sql::translate(sql, self.event_time.as_ref(), &self.streams)
                    .map_err(|e| format!("spec.pipeline.sql: {e}"))?;
                let clauses = planned.iter().map(|s| s.clause).collect();
                let streams = planned.iter().map(|s| s.stream).collect();
                let mut steps: Vec<StepSpec> = planned.into_iter().map(|s| s.step).collect();
                let errors =
                    crate::pipeline::sql::options::apply("spec.pipeline.sqlOptions", &self.sql_options, &mut steps);
                if !errors.is_empty() {
                    return Err(errors.join("; "));
                }
                Ok(PlannedSteps { steps: Cow::Owned(steps), clauses, streams })
            }
        }
    }
}

/// `message` with every `spec.pipeline.steps[i]` and the path after it
/// (`.window.size`) replaced by `path(i, path after it)`.
fn relabel(message: &str, path: impl Fn(usize, &str) -> String) -> String {
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
                out.push_str(&path(i, &tail[..end]));
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
        let path = |i: usize, _: &str| ["spec.pipeline.sql (WHERE)", "spec.pipeline.sql (SELECT)"][i].to_string();
        assert_eq!(
            relabel("spec.pipeline.steps[1].select[0]: no field `x`; spec.pipeline.steps[0].filter: bad", path),
            "spec.pipeline.sql (SELECT): no field `x`; spec.pipeline.sql (WHERE): bad"
        );
        assert_eq!(relabel("spec.pipeline.steps[x]: as is", path), "spec.pipeline.steps[x]: as is");
    }
}
