//! How Carrier reaches NATS: the server's URL and the credentials and TLS settings that go with
//! it, taken the way the `nats` CLI takes them (user and password or a token in the URL or on
//! their own, an NKey seed file, a `.creds` file, a CA and a client certificate for TLS), so
//! that a deployment's existing NATS settings work unchanged.
//!
//! Secrets never leave this type in a printable form: its `Debug` hides them, and
//! [`NatsOptions::display_url`] is the URL without its user information, which is what errors,
//! logs and the dashboard show.

use std::fmt;
use std::path::PathBuf;

/// Where the NATS server is and how to prove who we are to it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsOptions {
    /// `nats://host:port` (or `tls://`), several separated by commas; may carry
    /// `user:password@` or `token@`, which are taken out of it before connecting.
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// A `.creds` file (a user JWT and its NKey seed), for servers in operator mode.
    pub creds: Option<PathBuf>,
    /// A file holding an NKey seed (`SU...`).
    pub nkey: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients (mTLS); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl NatsOptions {
    /// Options with only a URL (which may still carry credentials).
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions { url: url.into(), ..Default::default() }
    }

    /// The URL without user information (`nats://u:secret@h:4222` → `nats://h:4222`): what may
    /// be printed.
    pub fn display_url(&self) -> String {
        split_user_info(&self.url).0
    }

    /// What credentials these options present, for error messages (never the secret itself).
    pub fn credentials(&self) -> String {
        let (_, from_url) = split_user_info(&self.url);
        if let Some(path) = &self.creds {
            format!("the credentials file {}", path.display())
        } else if let Some(path) = &self.nkey {
            format!("the NKey seed in {}", path.display())
        } else if let Some(user) = self.user.as_ref().or(from_url.user.as_ref()) {
            format!("user {user:?} with a password")
        } else if self.token.is_some() || from_url.token.is_some() {
            "a token".to_string()
        } else {
            "no credentials".to_string()
        }
    }

    /// The URL to hand the client (without user information) and the options carrying the
    /// credentials and TLS settings; or, with that URL, why the settings cannot be used.
    pub(crate) async fn client_options(&self) -> Result<(String, async_nats::ConnectOptions), (String, String)> {
        let (url, from_url) = split_user_info(&self.url);
        let refused = |reason: String| (url.clone(), reason);
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = &self.creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| refused(format!("cannot read the credentials file {}: {e}", path.display())))?;
        } else if let Some(path) = &self.nkey {
            let text = std::fs::read_to_string(path)
                .map_err(|e| refused(format!("cannot read the NKey seed file {}: {e}", path.display())))?;
            let seed = text.lines().map(str::trim).find(|l| l.starts_with('S')).ok_or_else(|| {
                refused(format!("{} holds no NKey seed (a line starting with S, e.g. SUA...)", path.display()))
            })?;
            options = options.nkey(seed.to_string());
        } else if let Some(user) = self.user.clone().or(from_url.user) {
            let password = self.password.clone().or(from_url.password).unwrap_or_default();
            options = options.user_and_password(user, password);
        } else if let Some(token) = self.token.clone().or(from_url.token) {
            options = options.token(token);
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(refused(format!("no CA certificate at {}", ca.display())));
            }
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                for file in [cert, key] {
                    if !file.is_file() {
                        return Err(refused(format!("no file at {}", file.display())));
                    }
                }
                options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
            }
            (Some(_), None) => return Err(refused("a client certificate needs its key (NATS_KEY)".into())),
            (None, Some(_)) => return Err(refused("a client key needs its certificate (NATS_CERT)".into())),
            (None, None) => {}
        }
        if url.split(',').any(|u| u.trim().starts_with("tls://")) {
            options = options.require_tls(true);
        }
        Ok((url, options))
    }
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |set: bool| if set { Some("***") } else { None };
        f.debug_struct("NatsOptions")
            .field("url", &self.display_url())
            .field("user", &self.user)
            .field("password", &hidden(self.password.is_some()))
            .field("token", &hidden(self.token.is_some()))
            .field("creds", &self.creds)
            .field("nkey", &self.nkey)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl From<&str> for NatsOptions {
    fn from(url: &str) -> NatsOptions {
        NatsOptions::new(url)
    }
}

impl From<String> for NatsOptions {
    fn from(url: String) -> NatsOptions {
        NatsOptions::new(url)
    }
}

impl From<&String> for NatsOptions {
    fn from(url: &String) -> NatsOptions {
        NatsOptions::new(url.as_str())
    }
}

/// Credentials found in a URL's user information.
#[derive(Default)]
struct UrlCredentials {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// Splits `user:password@` (or `token@`) off each of the comma-separated URLs. The first URL
/// that carries any gives the credentials (NATS presents one set to every server).
fn split_user_info(urls: &str) -> (String, UrlCredentials) {
    let mut found = UrlCredentials::default();
    let mut clean = Vec::new();
    for url in urls.split(',') {
        let url = url.trim();
        let (scheme, rest) = match url.find("://") {
            Some(i) => (&url[..i + 3], &url[i + 3..]),
            None => ("", url),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rfind('@') {
            Some(at) => {
                let info = &authority[..at];
                if found.user.is_none() && found.token.is_none() {
                    match info.split_once(':') {
                        Some((user, password)) => {
                            found.user = Some(percent_decode(user));
                            found.password = Some(percent_decode(password));
                        }
                        None => found.token = Some(percent_decode(info)),
                    }
                }
                clean.push(format!("{scheme}{}{path}", &authority[at + 1..]));
            }
            None => clean.push(url.to_string()),
        }
    }
    (clean.join(","), found)
}

/// `%40` → `@`, as URLs carry reserved characters of passwords.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_s_password_is_taken_out_and_never_shown() {
        let options = NatsOptions::new("nats://u:secret%40pw@127.0.0.1:4222");
        assert_eq!(options.display_url(), "nats://127.0.0.1:4222");
        let (_, found) = split_user_info(&options.url);
        assert_eq!(found.user.as_deref(), Some("u"));
        assert_eq!(found.password.as_deref(), Some("secret@pw"));
        assert!(!format!("{options:?}").contains("secret"));
        assert_eq!(options.credentials(), "user \"u\" with a password");
    }

    #[test]
    fn a_token_in_the_url_and_several_servers() {
        let options = NatsOptions::new("nats://s3cr3t@a:4222, nats://s3cr3t@b:4222/");
        assert_eq!(options.display_url(), "nats://a:4222,nats://b:4222/");
        let (_, found) = split_user_info(&options.url);
        assert_eq!(found.token.as_deref(), Some("s3cr3t"));
        assert_eq!(options.credentials(), "a token");
    }

    #[test]
    fn secrets_given_apart_are_hidden_too() {
        let options = NatsOptions {
            url: "nats://127.0.0.1:4222".into(),
            user: Some("u".into()),
            password: Some("hunter2".into()),
            token: Some("tok-123".into()),
            ..Default::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok-123"), "{shown}");
        assert_eq!(NatsOptions::new("nats://h:1").credentials(), "no credentials");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
