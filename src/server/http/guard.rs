//! What a web page cannot make a browser send, checked before any request is routed: a
//! page open on this machine reaches the HTTP door as well as `curl` does, and it must
//! not change anything (docs/decisions.md, "The HTTP door and browsers").
//!
//! - `Host` names this server: an IP literal, `localhost`, or a name in
//!   `[ingest] http_hosts`. A page whose own name was made to resolve to this machine
//!   (DNS rebinding) sends its own name, and is refused: otherwise it could read
//!   and write as a same-origin page.
//! - `Origin`, when a browser sends one, names the same host and port as `Host`: a
//!   page of another site is refused before anything happens.
//! - A `POST` says `Content-Type: application/json` or NDJSON (`application/x-ndjson`,
//!   `application/ndjson`, or `application/*+json`). A form, or a script's request
//!   without a CORS preflight, can only send `text/plain`, form types or no type at
//!   all; a JSON type makes the browser ask first, and flowd never grants it. `DELETE`
//!   always needs that preflight. Other methods change nothing.
//!
//! Sans-io: the request's headers in, a refusal out.

use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, ORIGIN};
use hyper::{Method, StatusCode};

/// Why a request is refused before routing: its status and a message that says what
/// to send instead.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

/// `Ok` when `method` with `headers` may be routed. `hosts` are the extra names the
/// server answers to (lower case).
pub fn check(method: &Method, headers: &HeaderMap, hosts: &[String]) -> Result<(), Refused> {
    let host = match headers.get(HOST).map(|h| h.to_str()) {
        // Not a browser: HTTP/1.0 clients and some tools send none.
        None => None,
        Some(Ok(host)) => Some(host.trim()),
        Some(Err(_)) => return Err(forbidden("the Host header is not text".into())),
    };
    if let Some(host) = host
        && !known_host(name_of(host), hosts)
    {
        return Err(forbidden(format!(
            "Host \"{host}\" is not a name of this server: requests name it by IP address or localhost; \
             add the name to [ingest] http_hosts to serve it"
        )));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .zip(host)
            .is_some_and(|(authority, host)| authority.eq_ignore_ascii_case(host));
        if !same {
            return Err(forbidden(format!(
                "a page of {origin} may not use this server: only requests from its own origin, or without an Origin header, are served"
            )));
        }
    }
    if method == Method::POST {
        let kind = headers.get(CONTENT_TYPE).and_then(|t| t.to_str().ok());
        if !kind.is_some_and(json_type) {
            return Err(Refused {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: format!(
                    "a POST needs Content-Type: application/json (or application/x-ndjson), not {}; \
                     with curl: -H 'content-type: application/json'",
                    kind.map_or("none".to_owned(), |k| format!("\"{k}\""))
                ),
            });
        }
    }
    Ok(())
}

fn forbidden(message: String) -> Refused {
    Refused {
        status: StatusCode::FORBIDDEN,
        message,
    }
}

/// The host of a `Host` value: without its port, an IPv6 literal without brackets.
fn name_of(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn known_host(name: &str, hosts: &[String]) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn json_type(kind: &str) -> bool {
    let essence = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/json" | "application/x-ndjson" | "application/ndjson"
    ) || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn hosts_by_ip_localhost_or_named() {
        let hosts = vec!["flowd.example".to_owned()];
        for host in [
            "127.0.0.1:7080",
            "10.1.2.3",
            "[::1]:7080",
            "[fe80::1]",
            "localhost:7080",
            "LOCALHOST",
            "flowd.example:80",
            "Flowd.Example.",
        ] {
            assert_eq!(
                check(&Method::GET, &headers(&[("host", host)]), &hosts),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "evil.example:7080",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "flowd.example.evil",
        ] {
            let refused = check(&Method::GET, &headers(&[("host", host)]), &hosts).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{host}");
            assert!(refused.message.contains("http_hosts"), "{}", refused.message);
        }
        assert_eq!(check(&Method::GET, &HeaderMap::new(), &[]), Ok(()));
    }

    #[test]
    fn origins_only_the_servers_own() {
        let own = headers(&[("host", "127.0.0.1:7080"), ("origin", "http://127.0.0.1:7080")]);
        assert_eq!(check(&Method::GET, &own, &[]), Ok(()));
        for origin in ["http://evil.example", "null", "http://127.0.0.1:8000", "file://"] {
            let request = headers(&[("host", "127.0.0.1:7080"), ("origin", origin)]);
            let refused = check(&Method::GET, &request, &[]).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin}");
        }
    }

    #[test]
    fn posts_carry_a_json_type() {
        for kind in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/X-NDJSON",
            "application/ndjson",
            "application/vnd.flowd+json",
        ] {
            let request = headers(&[("host", "localhost"), ("content-type", kind)]);
            assert_eq!(check(&Method::POST, &request, &[]), Ok(()), "{kind}");
        }
        for kind in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/json"),
        ] {
            let mut request = headers(&[("host", "localhost")]);
            if let Some(kind) = kind {
                request.insert(CONTENT_TYPE, kind.parse().unwrap());
            }
            let refused = check(&Method::POST, &request, &[]).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{kind:?}");
            assert!(
                refused.message.contains("application/json"),
                "{}",
                refused.message
            );
        }
        // Methods a page cannot send without a preflight, or that change nothing.
        assert_eq!(
            check(&Method::DELETE, &headers(&[("host", "localhost")]), &[]),
            Ok(())
        );
        assert_eq!(
            check(&Method::GET, &headers(&[("host", "localhost")]), &[]),
            Ok(())
        );
    }
}
