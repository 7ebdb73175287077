//! The console's login, on a server with credentials: `GET /` without them answers 401
//! with a page that asks for a token; `POST /login` (`{"token": "..."}`, JSON like
//! every state change, so no other site's page can send it) opens a session
//! (`server::sessions`) and sets its id in the cookie `flowd_session` (HttpOnly,
//! SameSite=Strict, Secure on a TLS door), which then serves as the token does;
//! `POST /logout` ends it. A session is taken only where no `Authorization` header
//! and no client certificate says who the client is.

use hyper::{HeaderMap, Request, StatusCode};

use super::reply::{Reply, error, json};
use crate::server::Front;
use crate::server::sessions::LIFETIME;

/// The cookie that carries a session's id.
pub const COOKIE: &str = "flowd_session";

/// The session id a request's `Cookie` headers carry, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `POST /login`: a session for the token of the JSON body, its id in the cookie.
pub async fn log_in(
    front: &Front,
    shard: &crate::runtime::shard::Shard,
    request: Request<hyper::body::Incoming>,
) -> Reply {
    if !front.gate.closed() {
        return error(
            StatusCode::BAD_REQUEST,
            "this server has no credentials file: everyone may use the console, no login needed",
        );
    }
    let (body, _charge) = match super::body(front, request).await {
        Ok(read) => read,
        Err(reply) => return reply,
    };
    let Some(token) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_owned))
    else {
        return error(StatusCode::BAD_REQUEST, "the body must be {\"token\": \"...\"}");
    };
    let Some(identity) = front.gate.identify(token.trim()) else {
        shard.shared.metrics.auth_refused.add(1);
        tracing::info!("a console login refused: the token is not one of this server's credentials");
        return error(
            StatusCode::UNAUTHORIZED,
            "the token is not one of this server's credentials (mistyped, or removed)",
        );
    };
    let id = match front.gate.sessions.open(token.trim(), std::time::Instant::now()) {
        Ok(id) => id,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot make a session id (/dev/urandom: {e})"),
            );
        }
    };
    tracing::info!("a console login as {:?}", identity.name);
    let mut reply = json(StatusCode::OK, &serde_json::json!({ "name": identity.name }));
    let secure = if front.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    );
    reply.headers_mut().insert(
        hyper::header::SET_COOKIE,
        hyper::header::HeaderValue::from_str(&cookie).expect("hex and ASCII"),
    );
    reply
}

/// `POST /logout`: the session of the request's cookie ends, and the cookie with it.
pub fn log_out(front: &Front, headers: &HeaderMap) -> Reply {
    let ended = session_id(headers).is_some_and(|id| front.gate.sessions.close(id));
    let mut reply = json(StatusCode::OK, &serde_json::json!({ "ended": ended }));
    reply.headers_mut().insert(
        hyper::header::SET_COOKIE,
        hyper::header::HeaderValue::from_static(
            "flowd_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    reply
}

/// What `GET /` answers a browser that has not logged in (401), or whose credential may
/// not see the console (403): a page that says `why`, asks for a token, sends it to
/// `/login` and loads the console again.
pub fn page(status: StatusCode, why: &str) -> Reply {
    let why = crate::server::page::escape(why);
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>flowd: log in</title>
<meta name="viewport" content="width=device-width">
<style>body{{font:15px system-ui,sans-serif;max-width:26em;margin:12vh auto;padding:0 1em}}
input,button{{font:inherit;padding:.4em}}input{{width:100%;box-sizing:border-box;margin:.5em 0}}
#error{{color:#b00}}</style></head><body>
<h1>flowd</h1><p>This server asks who you are: give a token of its credentials
(<code>flowd token add NAME --allow status,...</code> prints one).</p>
<form id="login"><input id="token" type="password" autocomplete="current-password" placeholder="token" autofocus>
<button>Log in</button></form><p id="error">{why}</p>
<script>
document.getElementById("login").onsubmit = async (e) => {{
  e.preventDefault();
  const r = await fetch("/login", {{method: "POST", headers: {{"content-type": "application/json"}},
    body: JSON.stringify({{token: document.getElementById("token").value}})}});
  if (r.ok) {{ location.reload(); return; }}
  let message = r.status + "";
  try {{ message = (await r.json()).error; }} catch (_) {{}}
  document.getElementById("error").textContent = message;
}};
</script></body></html>"#
    );
    let mut reply = super::reply::text(status, "text/html; charset=utf-8", html);
    reply.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer realm=\"flowd\""),
    );
    reply
}
