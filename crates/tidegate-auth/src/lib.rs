//! Gateway identity and authentication.
//!
//! * [`IdentityKey`]: the gateway's Ed25519 key pair, generated on the gateway at enrollment.
//!   Only its public half ever leaves the gateway.
//! * [`EnrollmentToken`]: a one-time secret an operator hands to a new gateway. The control
//!   plane stores only its SHA-256 digest ([`EnrollmentToken::digest`]).
//! * [`GatewayClaims`]: the short-lived JWT a gateway presents on every connection. It is signed
//!   with the identity key (`alg` pinned to EdDSA), names the gateway as issuer and subject and
//!   the control plane as audience, and carries a hash of the TLS session's exported keying
//!   material (`cbh`, channel-binding hash), so a stolen token is useless on any other TLS
//!   connection.
//!
//! This crate knows nothing of the network or the protocol; both binaries use it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fmt;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The label of the TLS exporter whose output binds a JWT to its TLS session.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-tidegate-gateway-auth-v1";

/// The longest lifetime a gateway token may claim (`exp - iat`), in seconds.
pub const MAX_TOKEN_LIFETIME_S: u64 = 300;

/// The lifetime gateways give their tokens by default, in seconds.
pub const DEFAULT_TOKEN_LIFETIME_S: u64 = 60;

/// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 30;

const ENROLLMENT_PREFIX: &str = "tge_";

/// Why authentication failed. The messages never include a token or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Key material could not be parsed or generated.
    #[error("invalid identity key: {0}")]
    InvalidKey(&'static str),
    /// The token is malformed, forged, expired, not yet valid, or for another audience or
    /// issuer; the kind names which check failed.
    #[error("gateway token rejected: {0}")]
    TokenRejected(String),
    /// The token is valid but bound to a different TLS session.
    #[error("gateway token is bound to another TLS session")]
    WrongChannelBinding,
    /// The token claims a lifetime above [`MAX_TOKEN_LIFETIME_S`].
    #[error("gateway token lifetime of {0} s exceeds the maximum")]
    LifetimeTooLong(u64),
    /// The token names no key, or a gateway that is not enrolled.
    #[error("gateway token names an unknown gateway")]
    UnknownGateway,
    /// The enrollment token is not in the expected form.
    #[error("malformed enrollment token")]
    MalformedEnrollmentToken,
}

/// A gateway's Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// URL-safe base64 without padding, as stored and sent in enrollment.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the form written by [`PublicKey::to_base64`].
    pub fn from_base64(s: &str) -> Result<Self, Error> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| Error::InvalidKey("public key is not base64url"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidKey("public key is not 32 bytes"))?;
        Ok(Self(arr))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A gateway's private identity key. The PKCS#8 bytes are zeroized on drop; `Debug` shows only
/// the public key.
pub struct IdentityKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: PublicKey,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl IdentityKey {
    /// Generates a new key pair from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| Error::InvalidKey("key generation failed"))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| Error::InvalidKey("not an Ed25519 PKCS#8 key"))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| Error::InvalidKey("unexpected public key length"))?;
        Ok(Self {
            pkcs8: Zeroizing::new(der.to_vec()),
            public: PublicKey(public),
        })
    }

    /// Loads a key from the PEM form written by [`IdentityKey::to_pem`].
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| Error::InvalidKey("PEM body is not base64"))?,
        );
        Self::from_pkcs8_der(&der)
    }

    /// The key as a PKCS#8 PEM document (`PRIVATE KEY`). Zeroized on drop.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.pkcs8));
        let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Mints a gateway token for one connection.
    ///
    /// `binding` is the TLS exporter output for [`TLS_EXPORTER_LABEL`] on this connection.
    pub fn mint_token(
        &self,
        gateway_id: &str,
        audience: &str,
        binding: &[u8],
        now_s: u64,
        lifetime_s: u64,
    ) -> Result<String, Error> {
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|_| Error::InvalidKey("random source failed"))?;
        let claims = GatewayClaims {
            iss: gateway_id.to_owned(),
            sub: gateway_id.to_owned(),
            aud: audience.to_owned(),
            iat: now_s,
            nbf: now_s,
            exp: now_s + lifetime_s,
            jti: URL_SAFE_NO_PAD.encode(jti),
            cbh: binding_hash(binding),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(gateway_id.to_owned());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| Error::TokenRejected(e.to_string()))
    }
}

/// The claims of a gateway token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayClaims {
    /// Issuer: the gateway's id.
    pub iss: String,
    /// Subject: the gateway's id.
    pub sub: String,
    /// Audience: the control plane's id.
    pub aud: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expires at.
    pub exp: u64,
    /// A unique id for this token.
    pub jti: String,
    /// Channel-binding hash: base64url(SHA-256(TLS exporter output)).
    pub cbh: String,
}

/// The outcome of a successful [`verify_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGateway {
    /// The gateway's id.
    pub gateway_id: String,
    /// The token's claims.
    pub claims: GatewayClaims,
}

/// Returns the id a token claims to come from (its `kid` header), without trusting it: use it
/// only to look up the key that [`verify_token`] then checks.
pub fn claimed_gateway(token: &str) -> Result<String, Error> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| Error::TokenRejected(e.to_string()))?;
    header.kid.ok_or(Error::UnknownGateway)
}

/// Verifies a gateway token: signature with the gateway's enrolled key, `alg` = EdDSA only,
/// `exp`, `nbf`, `aud`, `iss` = `sub` = the key's gateway, a lifetime of at most
/// [`MAX_TOKEN_LIFETIME_S`], and the TLS channel binding.
pub fn verify_token(
    token: &str,
    gateway_id: &str,
    key: &PublicKey,
    audience: &str,
    binding: &[u8],
) -> Result<VerifiedGateway, Error> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.algorithms = vec![Algorithm::EdDSA];
    validation.leeway = LEEWAY_S;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_audience(&[audience]);
    validation.set_issuer(&[gateway_id]);
    validation.sub = Some(gateway_id.to_owned());
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<GatewayClaims>(
        token,
        &DecodingKey::from_ed_der(&key.0),
        &validation,
    )
    .map_err(|e| Error::TokenRejected(format!("{:?}", e.kind())))?;
    let claims = data.claims;
    let lifetime = claims.exp.saturating_sub(claims.iat);
    if lifetime > MAX_TOKEN_LIFETIME_S {
        return Err(Error::LifetimeTooLong(lifetime));
    }
    let expected = binding_hash(binding);
    if !constant_time_eq(expected.as_bytes(), claims.cbh.as_bytes()) {
        return Err(Error::WrongChannelBinding);
    }
    Ok(VerifiedGateway {
        gateway_id: gateway_id.to_owned(),
        claims,
    })
}

fn binding_hash(binding: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(binding))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A one-time enrollment secret. `Debug` is redacted; the string is zeroized on drop.
#[derive(Clone)]
pub struct EnrollmentToken(Zeroizing<String>);

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentToken(<redacted>)")
    }
}

impl EnrollmentToken {
    /// A new random token (256 bits).
    pub fn generate() -> Result<Self, Error> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|_| Error::InvalidKey("random source failed"))?;
        Ok(Self(Zeroizing::new(format!(
            "{ENROLLMENT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(*raw)
        ))))
    }

    /// Parses a token as an operator pasted it.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let body = s
            .strip_prefix(ENROLLMENT_PREFIX)
            .ok_or(Error::MalformedEnrollmentToken)?;
        match URL_SAFE_NO_PAD.decode(body) {
            Ok(raw) if raw.len() == 32 => Ok(Self(Zeroizing::new(s.to_owned()))),
            _ => Err(Error::MalformedEnrollmentToken),
        }
    }

    /// The token, to hand to the operator once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest the control plane stores instead of the token.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// Seconds since the Unix epoch, saturating at 0 for a clock before 1970.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUD: &str = "cp-1";
    const GW: &str = "gw-1";
    const BINDING: &[u8] = b"exported keying material of this TLS session";

    fn mint(key: &IdentityKey, f: impl FnOnce(&mut GatewayClaims), alg: Algorithm) -> String {
        let mut claims = GatewayClaims {
            iss: GW.into(),
            sub: GW.into(),
            aud: AUD.into(),
            iat: now_s(),
            nbf: now_s(),
            exp: now_s() + 60,
            jti: "j".into(),
            cbh: binding_hash(BINDING),
        };
        f(&mut claims);
        let mut header = Header::new(alg);
        header.kid = Some(GW.into());
        let enc = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(&key.public.0).unwrap(),
            _ => EncodingKey::from_ed_der(&key.pkcs8),
        };
        jsonwebtoken::encode(&header, &claims, &enc).unwrap()
    }

    fn verify(key: &IdentityKey, token: &str) -> Result<VerifiedGateway, Error> {
        verify_token(token, GW, &key.public_key(), AUD, BINDING)
    }

    #[test]
    fn minted_token_verifies() {
        let key = IdentityKey::generate().unwrap();
        let token = key.mint_token(GW, AUD, BINDING, now_s(), 60).unwrap();
        assert_eq!(claimed_gateway(&token).unwrap(), GW);
        let v = verify(&key, &token).unwrap();
        assert_eq!(v.gateway_id, GW);
    }

    #[test]
    fn bad_tokens_are_rejected() {
        let key = IdentityKey::generate().unwrap();
        let other = IdentityKey::generate().unwrap();
        let now = now_s();
        let ed = Algorithm::EdDSA;
        let cases: Vec<(&str, String)> = vec![
            (
                "expired",
                mint(
                    &key,
                    |c| {
                        c.iat = now - 200;
                        c.nbf = now - 200;
                        c.exp = now - 100
                    },
                    ed,
                ),
            ),
            ("not yet valid", mint(&key, |c| c.nbf = now + 200, ed)),
            ("wrong audience", mint(&key, |c| c.aud = "cp-2".into(), ed)),
            ("wrong issuer", mint(&key, |c| c.iss = "gw-2".into(), ed)),
            ("wrong subject", mint(&key, |c| c.sub = "gw-2".into(), ed)),
            ("forged (other key)", mint(&other, |_| {}, ed)),
            (
                "HS256 with the public key as secret",
                mint(&key, |_| {}, Algorithm::HS256),
            ),
            (
                "too long lived",
                mint(&key, |c| c.exp = now + MAX_TOKEN_LIFETIME_S + 10, ed),
            ),
            (
                "other TLS session",
                mint(&key, |c| c.cbh = binding_hash(b"another session"), ed),
            ),
            ("alg none", alg_none_token()),
            ("garbage", "not.a.jwt".into()),
            ("empty", String::new()),
        ];
        for (name, token) in cases {
            assert!(verify(&key, &token).is_err(), "{name} was accepted");
        }
    }

    fn alg_none_token() -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"gw-1"}"#);
        let now = now_s();
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"gw-1","sub":"gw-1","aud":"cp-1","iat":{now},"nbf":{now},"exp":{},"jti":"j","cbh":"{}"}}"#,
            now + 60,
            binding_hash(BINDING)
        ));
        format!("{header}.{claims}.")
    }

    #[test]
    fn identity_key_pem_round_trips() {
        let key = IdentityKey::generate().unwrap();
        let pem = key.to_pem();
        let back = IdentityKey::from_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert!(IdentityKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n").is_err());
        assert!(!format!("{key:?}").contains(&pem[30..60]));
    }

    #[test]
    fn enrollment_tokens_parse_and_digest() {
        let t = EnrollmentToken::generate().unwrap();
        let parsed = EnrollmentToken::parse(&format!(" {} ", t.expose())).unwrap();
        assert_eq!(parsed.digest(), t.digest());
        assert_ne!(EnrollmentToken::generate().unwrap().digest(), t.digest());
        for bad in ["", "tge_", "tge_short", "xyz_AAAA", &t.expose()[1..]] {
            assert!(EnrollmentToken::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(!format!("{t:?}").contains(t.expose()));
    }

    #[test]
    fn public_key_base64_round_trips() {
        let key = IdentityKey::generate().unwrap().public_key();
        assert_eq!(PublicKey::from_base64(&key.to_base64()).unwrap(), key);
        assert!(PublicKey::from_base64("AAAA").is_err());
    }
}
