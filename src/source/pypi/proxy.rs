//! Which proxy a download goes through, read from the environment as curl and pip read it: `https_proxy` or
//! `http_proxy` by the URL's scheme, else `all_proxy`, and none for the hosts that `no_proxy` names.

use url::Url;

/// The proxy variables, captured once so that a resolve (and a test) never reads the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// `http_proxy` / `HTTP_PROXY`: for `http://` URLs.
    pub http: Option<String>,
    /// `https_proxy` / `HTTPS_PROXY`: for `https://` URLs.
    pub https: Option<String>,
    /// `all_proxy` / `ALL_PROXY`: for either, when the scheme's own variable is unset.
    pub all: Option<String>,
    /// `no_proxy` / `NO_PROXY`: comma-separated hosts (`example.com` also covers its subdomains, `.example.com`
    /// only them, `host:port` that port only, `*` every host) reached directly.
    pub no_proxy: Option<String>,
}

impl ProxySettings {
    /// The variables as set in this process, the lowercase spelling first; an empty value counts as unset.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            [name.to_owned(), name.to_ascii_uppercase()]
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        ProxySettings {
            http: var("http_proxy"),
            https: var("https_proxy"),
            all: var("all_proxy"),
            no_proxy: var("no_proxy"),
        }
    }

    /// The proxy to use for `url`, or `None` to connect directly.
    pub(super) fn for_url(&self, url: &Url) -> Option<&str> {
        let host = url.host_str()?;
        if self
            .no_proxy
            .as_deref()
            .is_some_and(|list| bypasses(list, host, url.port_or_known_default()))
        {
            return None;
        }
        let own = match url.scheme() {
            "https" => self.https.as_deref(),
            "http" => self.http.as_deref(),
            _ => None,
        };
        own.or(self.all.as_deref())
    }
}

/// Whether the `no_proxy` list names `host` (and `port`, where an entry gives one).
fn bypasses(list: &str, host: &str, port: Option<u16>) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = split_port(entry);
            if entry_port.is_some() && entry_port != port {
                return false;
            }
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.").or_else(|| name.strip_prefix('.')) {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == name || host.ends_with(&format!(".{name}")),
            }
        })
}

/// `host:port` split at the port, for names and bracketed IPv6 addresses (`[::1]:8080`).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(no_proxy: Option<&str>) -> ProxySettings {
        ProxySettings {
            http: Some("http://plain-proxy:3128".into()),
            https: Some("http://tls-proxy:3128".into()),
            all: None,
            no_proxy: no_proxy.map(str::to_owned),
        }
    }

    fn proxy_of(s: &ProxySettings, url: &str) -> Option<String> {
        s.for_url(&Url::parse(url).unwrap()).map(str::to_owned)
    }

    #[test]
    fn each_scheme_takes_its_own_proxy_and_all_proxy_fills_in() {
        let s = settings(None);
        assert_eq!(
            proxy_of(&s, "https://pypi.org/simple/").as_deref(),
            Some("http://tls-proxy:3128")
        );
        assert_eq!(
            proxy_of(&s, "http://mirror.local/simple/").as_deref(),
            Some("http://plain-proxy:3128")
        );
        let only_all = ProxySettings {
            all: Some("socks5://gate:1080".into()),
            ..ProxySettings::default()
        };
        assert_eq!(
            proxy_of(&only_all, "https://pypi.org/").as_deref(),
            Some("socks5://gate:1080")
        );
        assert_eq!(
            proxy_of(&ProxySettings::default(), "https://pypi.org/"),
            None
        );
    }

    #[test]
    fn no_proxy_names_hosts_domains_ports_and_everything() {
        let cases = [
            ("pypi.org", "https://pypi.org/simple/", true),
            ("pypi.org", "https://files.pypi.org/x.whl", true),
            ("pypi.org", "https://notpypi.org/", false),
            (".pypi.org", "https://pypi.org/", false),
            (".pypi.org", "https://files.pypi.org/", true),
            ("*.pypi.org", "https://files.pypi.org/", true),
            (
                "localhost, 127.0.0.1",
                "http://127.0.0.1:8080/simple/",
                true,
            ),
            ("127.0.0.1:9000", "http://127.0.0.1:8080/", false),
            ("127.0.0.1:8080", "http://127.0.0.1:8080/", true),
            ("PyPI.org", "https://pypi.org/", true),
            ("[::1]:8080", "http://[::1]:8080/", true),
            ("::1", "http://[::1]:8080/", true),
            ("*", "https://anything.example/", true),
            ("", "https://pypi.org/", false),
        ];
        for (no_proxy, url, direct) in cases {
            let got = proxy_of(&settings(Some(no_proxy)), url);
            assert_eq!(
                got.is_none(),
                direct,
                "no_proxy={no_proxy:?} url={url}: {got:?}"
            );
        }
    }
}
