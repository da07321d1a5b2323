//! Puts the git revision the binary was built from into `weir --version`.
//! `WEIR_REVISION` wins (an image build has no `.git`); otherwise `git`
//! is asked; a tree without either says `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WEIR_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    // The branch HEAD points at moves with every commit.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{reference}");
        }
    }
    let revision = std::env::var("WEIR_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=WEIR_REVISION={}", revision.unwrap_or_else(|| "unknown".into()));
}
