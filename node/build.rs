//! Embeds the git commit in `exo-p2p --version`: `EXO_GIT_COMMIT` when set (builds without a
//! .git directory, such as deploy/Dockerfile's), else `git rev-parse`.
fn main() {
    println!("cargo:rerun-if-env-changed=EXO_GIT_COMMIT");
    let commit = std::env::var("EXO_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().to_string())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EXO_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
