//! The `tern` binary as a user runs it: its output for the KV cache and depth options, and its errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("the tern binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `tern bench -d` names its tests by depth, with either cache type, and gives the decode's read bandwidth.
#[test]
fn bench_runs_at_a_depth_with_either_cache() {
    for kv in ["f16", "f32"] {
        let args = ["bench", "--synthetic", "135m", "--backend", "cpu", "-t", "2", "-p", "8", "-n", "4", "-r", "1"];
        let out = tern(&[&args[..], &["-d", "40", "--kv-cache", kv]].concat());
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{kv}: {}{}", stdout, text(&out.stderr));
        assert!(stdout.contains("| pp8 @ d40 |"), "{kv}: {stdout}");
        let tg = stdout.lines().find(|l| l.contains("| tg4 @ d40 |")).unwrap_or_else(|| panic!("{kv}: {stdout}"));
        // The last cell is the decode's read GB/s.
        let gbs: f64 = tg.trim().trim_end_matches('|').rsplit('|').next().unwrap().trim().parse().unwrap();
        assert!(gbs > 0.0, "{kv}: {tg}");
    }
}

/// `tern info --kv-cache` sizes the cache by its element: SmolLM2-135M's 30 layers of K and V, 192 wide, for
/// 1024 positions are 22.5 MiB in f16 and 45.0 MiB in f32.
#[test]
fn info_sizes_the_cache_by_its_type() {
    let m = model();
    assert!(m.exists(), "{} is missing: scripts/fetch-model.sh fetches it", m.display());
    for (kv, size) in [("f16", "22.5"), ("f32", "45.0")] {
        let out = tern(&["info", "--model", m.to_str().unwrap(), "--context", "1024", "--kv-cache", kv]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{kv}: {}", text(&out.stderr));
        assert!(stdout.contains(&format!("+ {kv} KV cache {size} MiB for 1024 tokens")), "{kv}: {stdout}");
    }
}

/// An unknown cache type is refused by name, before anything loads.
#[test]
fn an_unknown_cache_type_is_a_clear_error() {
    let out = tern(&["bench", "--synthetic", "135m", "--backend", "cpu", "--kv-cache", "q8"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown KV cache type \"q8\": expected f16 or f32"), "{stderr}");
}

/// Greedy generation on the CPU answers the same with an f32 cache as with the default f16 one (later tokens may
/// part ways: f16 rounding can move a near tie).
#[test]
fn generate_with_either_cache_agrees() {
    let m = model();
    assert!(m.exists(), "{} is missing: scripts/fetch-model.sh fetches it", m.display());
    let run = |kv: &str| {
        let args = ["generate", "--model", m.to_str().unwrap(), "--backend", "cpu", "--temperature", "0", "-n", "12"];
        let out = tern(&[&args[..], &["--prompt", "The capital of France is", "--kv-cache", kv]].concat());
        assert!(out.status.success(), "{kv}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    for kv in ["f16", "f32"] {
        let said = run(kv);
        assert!(said.starts_with(" Paris"), "{kv}: {said:?}");
    }
}
