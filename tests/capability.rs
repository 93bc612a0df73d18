//! What some tests need from the machine, and what happens when it is missing.
//!
//! A test whose capability is missing FAILS, saying what to install, unless the user opted out
//! of that capability with `EXO_SKIP` (a comma-separated list: `netns`, `python`, `containers`,
//! `chromium`, `llamacpp`, or `all`). An opted-out test prints `SKIPPED <test>: <why>` straight to
//! stderr (past the test harness's capture, so it shows even when the test passes) and appends
//! that line to the file `$EXO_SKIPPED_LOG` when set (`scripts/test.sh` lists them at the end).
//! `EXO_REQUIRE_<CAP>=1` (as `.ci/run` sets for every capability) makes a missing capability a
//! failure even when `EXO_SKIP` lists it.
//!
//! Included by path (`#[path]`) from each crate's test helpers, so every crate decides the same
//! way; tests/python/conftest.py implements the same rules for the Python tests.
#![allow(dead_code)]

use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Root and iproute2, for tests in network namespaces.
    Netns,
    /// python3 with venv and pip.
    Python,
    /// podman that can run containers, debootstrap, systemd-analyze.
    Containers,
    /// Chromium and chromedriver, for the chat page in a real browser.
    Chromium,
    /// llama.cpp's tools, built by scripts/llamacpp.sh.
    Llamacpp,
}

impl Capability {
    /// The name `EXO_SKIP` lists.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Netns => "netns",
            Capability::Python => "python",
            Capability::Containers => "containers",
            Capability::Chromium => "chromium",
            Capability::Llamacpp => "llamacpp",
        }
    }

    fn require_var(self) -> String {
        format!("EXO_REQUIRE_{}", self.name().to_ascii_uppercase())
    }

    fn opted_out(self) -> bool {
        std::env::var("EXO_SKIP").is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|s| s.eq_ignore_ascii_case(self.name()) || s.eq_ignore_ascii_case("all"))
        })
    }

    fn required(self) -> bool {
        std::env::var(self.require_var()).as_deref() == Ok("1")
    }
}

/// Whether `test` may run. `missing` says what is absent (None: everything is there). When
/// something is missing, the test is skipped loudly if the user opted out of `cap`, and fails
/// (this panics) otherwise.
pub fn check(cap: Capability, test: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let name = cap.name();
    if cap.required() {
        panic!("{test} needs {name}: {why} ({}=1)", cap.require_var());
    }
    if !cap.opted_out() {
        panic!(
            "{test} needs {name}: {why}. Install it, or opt out with EXO_SKIP={name} \
             (README, \"Tests\")"
        );
    }
    let line = format!("SKIPPED {test}: {why} (EXO_SKIP={name})");
    let _ = writeln!(std::io::stderr(), "\n*** {line} ***\n");
    if let Some(path) = std::env::var_os("EXO_SKIPPED_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    false
}
