//! Where the binary finds the files it ships when none are given: the working directory's
//! `pools/`, `policies/` and `data/`, else the source tree it was built from.

use std::path::{Path, PathBuf};

/// A path relative to the repository: from the working directory if it is there, else from the
/// source tree.
fn shipped(relative: &str) -> PathBuf {
    let relative = Path::new(relative);
    if relative.exists() {
        relative.to_owned()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

/// The default pool, `pools/squad-v1.1.toml`.
pub fn default_pool_path() -> PathBuf {
    shipped("pools/squad-v1.1.toml")
}

/// The shipped policy, `policies/squad-v1.1.json`.
pub fn default_policy_path() -> PathBuf {
    shipped("policies/squad-v1.1.json")
}

/// The default pool's data set, `data/squad-v1.1/dev.json`, found like the pool.
pub fn default_data_path() -> PathBuf {
    default_pool_path().with_file_name("../data/squad-v1.1/dev.json")
}
