//! TURN REST API credentials (coturn `use-auth-secret`).
//!
//! Owns: the credential format: username `<unix-expiry>:<id>`, password
//! `base64(HMAC-SHA1(secret, username))`, lifetime at most one hour.
//! Must not: log the secret or a password, or make network requests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use skiff_proto::signal::IceServer;

use crate::config::TurnConfig;

/// Mints the ICE server list for one client. STUN URLs carry no credentials.
pub(crate) fn ice_servers(turn: &TurnConfig, id: &str, now: SystemTime) -> (Vec<IceServer>, u64) {
    let (stun, turn_urls): (Vec<String>, Vec<String>) = turn
        .urls
        .iter()
        .cloned()
        .partition(|u| u.starts_with("stun:") || u.starts_with("stuns:"));
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
        });
    }
    let Some(secret) = turn.secret.as_deref() else {
        return (servers, 0);
    };
    if turn_urls.is_empty() {
        return (servers, 0);
    }
    let expiry = now
        .checked_add(Duration::from_secs(turn.ttl_secs))
        .unwrap_or(now);
    let expiry = expiry
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let username = format!("{expiry}:{id}");
    let credential = password(secret, &username);
    servers.push(IceServer {
        urls: turn_urls,
        username: Some(username),
        credential: Some(credential),
    });
    (servers, turn.ttl_secs)
}

/// `base64(HMAC-SHA1(secret, username))`, as coturn computes it.
pub fn password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_the_coturn_reference_vector() {
        // Computed independently: python3 hmac.new(b"north", b"1433895918:alice", sha1).
        assert_eq!(
            password("north", "1433895918:alice"),
            "RqMvcGPYTJMGThVLSi4amT4zFtI="
        );
        assert_ne!(
            password("south", "1433895918:alice"),
            "RqMvcGPYTJMGThVLSi4amT4zFtI="
        );
    }

    #[test]
    fn credentials_expire_within_the_ttl() {
        let turn = TurnConfig {
            secret: Some("netlab-secret".into()),
            urls: vec![
                "stun:203.0.113.10:3478".into(),
                "turn:203.0.113.10:3478?transport=udp".into(),
            ],
            ttl_secs: 600,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (servers, ttl) = ice_servers(&turn, "abc", now);
        assert_eq!(ttl, 600);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].username, None);
        assert_eq!(servers[1].username.as_deref(), Some("1700000600:abc"));
        assert_eq!(
            servers[1].credential,
            Some(password("netlab-secret", "1700000600:abc"))
        );
        let none = TurnConfig {
            secret: None,
            ..turn
        };
        assert_eq!(ice_servers(&none, "abc", now).1, 0);
    }
}
