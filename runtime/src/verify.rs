//! Auditing the committed output of a keyed running count and sum over
//! generated records (`generator` -> `keyBy: key` -> `aggregate: {count,
//! sum: [value]}` -> `file` sink): is every record there exactly once? The
//! test suites use it after crashes; a user can run it after any run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::connectors::file_sink::read_committed;
use crate::connectors::generator::generated;

/// Per key (`k<n>`): how many of the first `count` generated records it
/// gets, and the sum of their values.
pub fn expected_per_key(count: u64, keys: u64) -> BTreeMap<String, (u64, i64)> {
    let mut m: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for seq in 0..count {
        let (k, v) = generated(seq, keys);
        let e = m.entry(format!("k{k}")).or_default();
        e.0 += 1;
        e.1 += v;
    }
    m
}

/// Per key and window start: the window's end, its record count and the
/// sum of its values.
pub type ExpectedWindows = BTreeMap<(String, i64), Window>;

/// A window's end, record count and sum of values.
pub type Window = (i64, u64, i64);

/// Generated records with event time `seq * step_ms` in windows of
/// `size_ms` starting every `slide_ms`.
pub fn expected_windows(count: u64, keys: u64, step_ms: i64, size_ms: i64, slide_ms: i64) -> ExpectedWindows {
    let mut m = ExpectedWindows::new();
    for seq in 0..count {
        let (k, v) = generated(seq, keys);
        let ts = seq as i64 * step_ms;
        let mut start = ts - ts.rem_euclid(slide_ms);
        while start > ts - size_ms {
            let e = m.entry((format!("k{k}"), start)).or_insert((start + size_ms, 0, 0));
            e.1 += 1;
            e.2 += v;
            start -= slide_ms;
        }
    }
    m
}

/// Generated records with event time `seq * step_ms` in session windows:
/// a key's session ends `gap_ms` after its last record.
pub fn expected_sessions(count: u64, keys: u64, step_ms: i64, gap_ms: i64) -> ExpectedWindows {
    let mut m = ExpectedWindows::new();
    let mut open: BTreeMap<String, i64> = BTreeMap::new();
    for seq in 0..count {
        let (k, v) = generated(seq, keys);
        let (key, ts) = (format!("k{k}"), seq as i64 * step_ms);
        let start = match open.get(&key) {
            Some(start) if m[&(key.clone(), *start)].0 > ts => *start,
            _ => ts,
        };
        open.insert(key.clone(), start);
        let e = m.entry((key, start)).or_insert((0, 0, 0));
        e.0 = ts + gap_ms;
        e.1 += 1;
        e.2 += v;
    }
    m
}

/// Every expected window committed exactly once, with its exact bounds,
/// count and sum, from rows `{"key", "window_start", "window_end",
/// "count", "sum_value"}`.
pub fn check_windows_exactly_once(rows: Vec<serde_json::Value>, want: &ExpectedWindows) -> Result<(), String> {
    let mut got: BTreeMap<(String, i64), Vec<Window>> = BTreeMap::new();
    for row in rows {
        let (Some(key), Some(start), Some(end), Some(count), Some(sum)) = (
            row["key"].as_str(),
            row["window_start"].as_i64(),
            row["window_end"].as_i64(),
            row["count"].as_u64(),
            row["sum_value"].as_i64(),
        ) else {
            return Err(format!("not a window count/sum: {row}"));
        };
        got.entry((key.to_string(), start)).or_default().push((end, count, sum));
    }
    for ((key, start), expected) in want {
        match got.get(&(key.clone(), *start)).map(Vec::as_slice) {
            Some([one]) if one == expected => {}
            Some([one]) => {
                return Err(format!("key {key}, window at {start}: (end, count, sum) {one:?}, expected {expected:?}"))
            }
            Some(many) => return Err(format!("key {key}, window at {start}: committed {} times", many.len())),
            None => return Err(format!("key {key}, window at {start}: missing")),
        }
    }
    if let Some((key, start)) = got.keys().find(|k| !want.contains_key(*k)) {
        return Err(format!("key {key}, window at {start}: not expected at all"));
    }
    Ok(())
}

/// Committed updates per key: running count -> (times seen, running sum).
pub type Updates = BTreeMap<String, BTreeMap<u64, (u32, i64)>>;

/// Reads the committed updates under a file sink's directory.
pub fn committed_updates(out: &Path) -> Result<Updates, String> {
    let rows = read_committed(out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    updates_of(rows)
}

/// The updates among rows `{"key", "count", "sum_value"}` from any sink.
pub fn updates_of(rows: Vec<serde_json::Value>) -> Result<Updates, String> {
    let mut updates: Updates = BTreeMap::new();
    for row in rows {
        let (Some(key), Some(count), Some(sum)) =
            (row["key"].as_str(), row["count"].as_u64(), row["sum_value"].as_i64())
        else {
            return Err(format!("not a count/sum update: {row}"));
        };
        updates.entry(key.to_string()).or_default().entry(count).or_insert((0, sum)).0 += 1;
    }
    Ok(updates)
}

/// Every record counted exactly once: each key's updates are exactly
/// `1..=n`, each once, and the last carries the whole sum.
pub fn check_exactly_once(out: &Path, count: u64, keys: u64) -> Result<(), String> {
    check_updates_exactly_once(&committed_updates(out)?, count, keys)
}

/// [`check_exactly_once`] on updates read from any sink.
pub fn check_updates_exactly_once(got: &Updates, count: u64, keys: u64) -> Result<(), String> {
    check_updates_against(got, &expected_per_key(count, keys))
}

/// Each key's updates are exactly `1..=n` once each, the last with the
/// sum, for `want`'s count `n` and sum per key.
pub fn check_updates_against(got: &Updates, want: &BTreeMap<String, (u64, i64)>) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} keys in the output, {} expected", got.len(), want.len()));
    }
    for (key, (n, sum)) in want {
        let updates = got.get(key).ok_or_else(|| format!("key {key} missing from the output"))?;
        if let Some((c, (seen, _))) = updates.iter().find(|(_, (seen, _))| *seen != 1) {
            return Err(format!("key {key}: update {c} committed {seen} times"));
        }
        let counts: Vec<u64> = updates.keys().copied().collect();
        if counts != (1..=*n).collect::<Vec<_>>() {
            let last = counts.last().copied().unwrap_or(0);
            return Err(format!("key {key}: {} updates up to {last}, expected exactly 1..={n}", counts.len()));
        }
        if updates[n].1 != *sum {
            return Err(format!("key {key}: final sum {}, expected {sum}", updates[n].1));
        }
    }
    Ok(())
}

/// What an upsert sink keyed by `key` must end with: one row per key,
/// holding its final count and sum.
pub fn check_final_per_key(rows: Vec<serde_json::Value>, count: u64, keys: u64) -> Result<(), String> {
    let want = expected_per_key(count, keys);
    let got = updates_of(rows)?;
    if got.len() != want.len() {
        return Err(format!("{} keys in the table, {} expected", got.len(), want.len()));
    }
    for (key, (n, sum)) in &want {
        let updates = got.get(key).ok_or_else(|| format!("key {key} missing from the table"))?;
        let rows: Vec<(u64, i64)> = updates.iter().map(|(c, (_, s))| (*c, *s)).collect();
        if rows != vec![(*n, *sum)] {
            return Err(format!("key {key}: rows (count, sum) {rows:?}, expected [({n}, {sum})]"));
        }
    }
    Ok(())
}

/// Nothing lost (duplicates allowed): every key reached its count and sum
/// and no update in between is missing.
pub fn check_at_least_once(out: &Path, count: u64, keys: u64) -> Result<(), String> {
    let want = expected_per_key(count, keys);
    let got = committed_updates(out)?;
    for (key, (n, sum)) in &want {
        let updates = got.get(key).ok_or_else(|| format!("key {key} missing from the output"))?;
        if let Some(c) = (1..=*n).find(|c| !updates.contains_key(c)) {
            return Err(format!("key {key}: update {c} lost"));
        }
        let max_sum = updates.values().map(|u| u.1).max().unwrap_or(i64::MIN);
        if max_sum < *sum {
            return Err(format!("key {key}: sum reached {max_sum}, below {sum}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rows: &[(String, u64, i64)]) {
        let text: String =
            rows.iter().map(|(k, c, s)| format!("{{\"key\":\"{k}\",\"count\":{c},\"sum_value\":{s}}}\n")).collect();
        std::fs::write(dir.join("part-00000-0000000001.jsonl"), text).unwrap();
    }

    fn exact_rows(count: u64, keys: u64) -> Vec<(String, u64, i64)> {
        let mut state: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
        (0..count)
            .map(|seq| {
                let (k, v) = generated(seq, keys);
                let e = state.entry(k).or_default();
                e.0 += 1;
                e.1 += v;
                (format!("k{k}"), e.0, e.1)
            })
            .collect()
    }

    #[test]
    fn accepts_exact_output_and_names_a_duplicate_or_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let rows = exact_rows(500, 7);
        write(dir.path(), &rows);
        assert_eq!(check_exactly_once(dir.path(), 500, 7), Ok(()));
        assert_eq!(check_at_least_once(dir.path(), 500, 7), Ok(()));

        let mut dup = rows.clone();
        dup.push(rows[10].clone());
        write(dir.path(), &dup);
        let err = check_exactly_once(dir.path(), 500, 7).unwrap_err();
        assert!(err.contains("committed 2 times"), "{err}");
        assert_eq!(check_at_least_once(dir.path(), 500, 7), Ok(()), "duplicates are fine at least once");

        let mut gap = rows.clone();
        gap.remove(10);
        write(dir.path(), &gap);
        assert!(check_exactly_once(dir.path(), 500, 7).is_err());
        assert!(check_at_least_once(dir.path(), 500, 7).unwrap_err().contains("lost"));
    }
}
