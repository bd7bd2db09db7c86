//! Replays every input of the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! entry point its fuzz target calls, so that an input that once crashed a parser keeps
//! passing on stable Rust. A missing or empty corpus fails the test.

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
fn model_resources_corpus_replays_without_a_panic() {
    replay("model_resources", dbward_model::fuzzing::resources);
}

#[test]
fn model_config_corpus_replays_without_a_panic() {
    replay("model_config", dbward_model::fuzzing::config);
}
