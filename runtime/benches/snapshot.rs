//! What a checkpoint's snapshot of keyed state costs the task thread: the
//! pause at the barrier (the synchronous part of the snapshot) and the
//! updates that follow it while the encoder runs on another thread, with
//! the same updates without a snapshot printed beside them. String keys,
//! `u64` state, 128 key groups. `cargo bench --bench snapshot [-- KEYS]`.

use std::time::{Duration, Instant};

use weir_runtime::keygroup::KeyGroupRange;
use weir_runtime::state::KeyedStateBackend;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Peak resident memory of this process so far, from /proc.
fn peak_rss_mb() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB").trim());
    kb.and_then(|v| v.parse::<u64>().ok()).map_or("?".into(), |kb| format!("{} MB", kb / 1024))
}

fn update_all(b: &mut KeyedStateBackend<String, u64>, names: &[String]) -> Duration {
    let t = Instant::now();
    for k in names {
        if let Some(v) = b.get_mut(k) {
            *v += 1;
        }
    }
    t.elapsed()
}

fn main() {
    let keys: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2_000_000);
    let mut b: KeyedStateBackend<String, u64> = KeyedStateBackend::new(KeyGroupRange::for_subtask(128, 1, 0), 128);
    let names: Vec<String> = (0..keys).map(|i| format!("user-{i:012}")).collect();
    update_all(&mut b, &names);
    println!("{keys} keys; peak RSS after loading: {}", peak_rss_mb());
    let plain = update_all(&mut b, &names);
    println!("every key updated once, no snapshot: {}", ms(plain));
    for wait_for_encoder in [false, true] {
        for _ in 0..3 {
            let t = Instant::now();
            let snapshot = b.snapshot();
            let pause = t.elapsed();
            let encoder = std::thread::spawn(move || {
                let t = Instant::now();
                let bytes: usize = snapshot.encode().map_or(0, |blobs| blobs.iter().map(|(_, b)| b.len()).sum());
                (t.elapsed(), bytes)
            });
            let (encoded, running) =
                if wait_for_encoder { (Some(encoder.join()), None) } else { (None, Some(encoder)) };
            let after = update_all(&mut b, &names);
            let (encode, bytes) =
                encoded.or_else(|| running.map(|e| e.join())).and_then(Result::ok).unwrap_or_default();
            let again = update_all(&mut b, &names);
            println!(
                "snapshot: pause {}; every key updated once after it{}: {} ({:.2}x no snapshot), then again {}; \
                 encoded {} MB in {}",
                ms(pause),
                if wait_for_encoder { ", once encoded" } else { ", while encoding" },
                ms(after),
                after.as_secs_f64() / plain.as_secs_f64(),
                ms(again),
                bytes / (1 << 20),
                ms(encode)
            );
        }
    }
    println!("peak RSS: {}", peak_rss_mb());
}
