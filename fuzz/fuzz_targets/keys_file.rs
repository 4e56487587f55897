//! The API keys file (`--api-keys FILE`), as the server reads it at start, on change and on
//! SIGHUP: `keys::parse` (TOML, then every check: client ids, hashes, rates, bursts, times),
//! and a file it accepts compiled into the lookup table the authenticator uses.
//!
//! A file parse accepts must: give every client with a rate a usable limit (a rate that
//! silently became "no limit of its own" would hand the client the default); write back with
//! `to_toml` (what `cra keys add|revoke` save) into a file that parses to the same thing;
//! compile with one lookup entry per well-formed hash; and find no client for a key that is
//! not in it.
#![no_main]

use cra::security::{
    keys::{self, KeySet, Lookup},
    rate::RateLimits,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = keys::parse(data) else {
        return;
    };
    for c in &file.clients {
        assert!(keys::check_client_id(&c.id).is_ok(), "{:?}", c.id);
        if c.rate.is_some() {
            assert!(c.limit().is_some(), "client {:?}: a rate with no limit", c.id);
        }
    }
    let written = file.to_toml();
    let reread = keys::parse(written.as_bytes())
        .unwrap_or_else(|e| panic!("to_toml wrote a file parse refuses: {e}\n{written}"));
    assert_eq!(reread, file, "{written}");

    let set = KeySet::compile(&file, &RateLimits::new(None));
    assert_eq!(set.clients(), file.clients.len());
    let keys: usize = file.clients.iter().map(|c| c.keys.len()).sum();
    let revoked: usize = file
        .clients
        .iter()
        .flat_map(|c| &c.keys)
        .filter(|k| k.revoked.is_some())
        .count();
    assert_eq!(set.active_keys(), keys - revoked);
    // Every hash in the file is some key's; this one is no key's that parse lets through
    // (its SHA-256 would have to be in the file).
    assert!(matches!(set.lookup("cra_not-a-key-of-this-file"), Lookup::Unknown));
});
