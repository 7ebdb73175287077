//! Who a Kafka client is, on a server with credentials: SASL/PLAIN over flowd's tokens
//! (SaslHandshake v1, then SaslAuthenticate), or the client certificate the TLS door
//! verified. The user name is the credential's name and the password its token; the
//! token is checked as AUTH checks it (its hash, in constant time) and must belong to that
//! name. Until a client proved itself it may ask ApiVersions and SASL only, and must do
//! so within `io_timeout` of connecting; a failed authentication is answered
//! SASL_AUTHENTICATION_FAILED and the connection closed, as Kafka does. Each request then
//! needs the permissions the binary protocol's would: `produce:T` to produce, `consume:T`
//! to fetch or list offsets.
//!
//! PLAIN sends the token as it is: over a network, use it inside TLS (`tls_cert`).

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::sasl_authenticate_request::SaslAuthenticateRequest;
use kafka_protocol::messages::sasl_authenticate_response::SaslAuthenticateResponse;
use kafka_protocol::messages::sasl_handshake_request::SaslHandshakeRequest;
use kafka_protocol::messages::sasl_handshake_response::SaslHandshakeResponse;
use kafka_protocol::protocol::StrBytes;

use crate::auth::Identity;
use crate::auth::permission::Need;
use crate::protocol::ProtocolError;
use crate::runtime::cluster::peers::Peers;
use crate::server::gate::Gate;
use crate::server::relay::Relays;

use super::brokers::Brokers;

/// Kafka's SASL error codes.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const ILLEGAL_SASL_STATE: i16 = 34;
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// The one mechanism served.
pub const PLAIN: &str = "PLAIN";

/// Who a connection's client is, and what it may do.
#[derive(Clone)]
pub struct Who {
    pub gate: Arc<Gate>,
    pub identity: Option<Arc<Identity>>,
    /// What another peer leads (a group's commits there, its offsets) is asked of it
    /// for this client, with the permissions the client proved.
    pub relays: Relays,
    /// The cluster, if there is one, and the address the client reached this door at:
    /// who coordinates which group (`brokers.rs`).
    pub cluster: Option<Arc<Peers>>,
    pub reached: SocketAddr,
}

impl Who {
    /// Whether the client may send requests other than ApiVersions and SASL.
    pub fn proved(&self) -> bool {
        !self.gate.closed() || self.identity.is_some()
    }

    /// The brokers as this door sees them now.
    pub fn brokers(&self) -> Brokers {
        Brokers::of(self.cluster.as_ref(), self.reached)
    }

    /// Ok when the client may do what `needs` says; else why not.
    pub fn allow(&self, needs: &[Need<'_>]) -> Result<(), ProtocolError> {
        self.gate.allow(self.identity.as_deref(), needs)
    }
}

/// A connection's SASL exchange.
#[derive(Default)]
pub struct Exchange {
    /// A SaslHandshake chose PLAIN and SaslAuthenticate has not come yet.
    plain_chosen: bool,
}

/// The answer to SaslHandshake: PLAIN is taken, anything else refused with the list.
pub fn handshake(request: &SaslHandshakeRequest, exchange: &mut Exchange) -> SaslHandshakeResponse {
    let mut response = SaslHandshakeResponse::default();
    response.mechanisms = vec![StrBytes::from_static_str(PLAIN)];
    if request.mechanism.as_str() == PLAIN {
        exchange.plain_chosen = true;
    } else {
        response.error_code = UNSUPPORTED_SASL_MECHANISM;
    }
    response
}

/// The answer to SaslAuthenticate, and whether it proved the client (`who` then knows
/// it); a refusal closes the connection once answered.
pub fn authenticate(
    request: &SaslAuthenticateRequest,
    exchange: &mut Exchange,
    who: &mut Who,
) -> (SaslAuthenticateResponse, bool) {
    let mut response = SaslAuthenticateResponse::default();
    let outcome = if !std::mem::take(&mut exchange.plain_chosen) {
        Err((
            ILLEGAL_SASL_STATE,
            "SaslAuthenticate before a SaslHandshake choosing PLAIN".to_owned(),
        ))
    } else if who.identity.is_some() {
        Err((
            ILLEGAL_SASL_STATE,
            "this connection proved itself already".to_owned(),
        ))
    } else {
        plain(&request.auth_bytes)
            .and_then(|(name, token)| {
                let identity = who
                    .gate
                    .identify(token)
                    .filter(|identity| identity.name == name)?;
                Some((identity, token))
            })
            .ok_or_else(|| {
                (
                    SASL_AUTHENTICATION_FAILED,
                    "unknown user or token: the user name is the credential's name, the password its token \
                     (flowd token add NAME --allow ...)"
                        .to_owned(),
                )
            })
    };
    match outcome {
        Ok((identity, token)) => {
            who.relays = who.relays.as_client(Some(&identity.name), Some(token));
            who.identity = Some(identity);
            (response, true)
        }
        Err((code, message)) => {
            response.error_code = code;
            response.error_message = Some(StrBytes::from_string(message));
            (response, false)
        }
    }
}

/// PLAIN's message (RFC 4616): `[authzid] NUL authcid NUL passwd`, as (name, password);
/// an authzid, when given, must be the same name.
fn plain(bytes: &[u8]) -> Option<(&str, &str)> {
    let mut parts = bytes.split(|b| *b == 0);
    let (authzid, name, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || (!authzid.is_empty() && authzid != name) {
        return None;
    }
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(password).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_takes_a_name_and_a_password_and_an_authzid_only_when_it_is_the_name() {
        assert_eq!(plain(b"\0ada\0flowd_x"), Some(("ada", "flowd_x")));
        assert_eq!(plain(b"ada\0ada\0flowd_x"), Some(("ada", "flowd_x")));
        assert_eq!(plain(b"bob\0ada\0flowd_x"), None);
        assert_eq!(plain(b"\0ada"), None);
        assert_eq!(plain(b"\0ada\0p\0more"), None);
        assert_eq!(plain(b"\0\xff\0p"), None);
    }
}
