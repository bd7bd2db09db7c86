//! Replays every input of the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! entry point its fuzz target calls, so that an input that once crashed a parser keeps
//! passing on stable Rust. A missing or empty corpus fails the test. All targets are replayed
//! here, in the one crate that depends on every parser's owner (proxy, pki, model, server).

use std::path::{Path, PathBuf};

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("corpus {} cannot be read: {err}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("corpus {} cannot be listed: {err}", dir.display()));
    inputs.retain(|path| path.is_file());
    inputs.sort();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    for path in &inputs {
        let data = std::fs::read(path)
            .unwrap_or_else(|err| panic!("{} cannot be read: {err}", path.display()));
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            panic!("{} makes the {target} entry point panic", path.display());
        }
    }
    println!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn api_body_corpus_replays_without_a_panic() {
    replay("api_body", dbward_server::fuzzing::api_body);
}

#[test]
fn pg_startup_corpus_replays_without_a_panic() {
    replay("pg_startup", dbward_proxy::fuzzing::pg_startup);
}

#[test]
fn pg_messages_corpus_replays_without_a_panic() {
    replay("pg_messages", dbward_proxy::fuzzing::pg_messages);
}

#[test]
fn pg_relay_tap_corpus_replays_without_a_panic() {
    replay("pg_relay_tap", dbward_proxy::fuzzing::pg_relay_tap);
}

#[test]
fn mysql_handshake_corpus_replays_without_a_panic() {
    replay("mysql_handshake", dbward_proxy::fuzzing::mysql_handshake);
}

#[test]
fn mysql_relay_tap_corpus_replays_without_a_panic() {
    replay("mysql_relay_tap", dbward_proxy::fuzzing::mysql_relay_tap);
}

#[test]
fn pki_identity_corpus_replays_without_a_panic() {
    replay("pki_identity", dbward_pki::fuzzing::identity);
}

#[test]
fn pki_csr_corpus_replays_without_a_panic() {
    replay("pki_csr", dbward_pki::fuzzing::csr);
}

#[test]
fn model_resources_corpus_replays_without_a_panic() {
    replay("model_resources", dbward_model::fuzzing::resources);
}

#[test]
fn model_config_corpus_replays_without_a_panic() {
    replay("model_config", dbward_model::fuzzing::config);
}
