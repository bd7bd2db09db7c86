//! ID tokens: a JWS in compact form signed by the provider, checked against the provider's
//! published keys (JWKS) with `ring`.
//!
//! Accepted algorithms: RS256, RS384, RS512 (RSA keys of at least 2048 bits), PS256, ES256,
//! ES384. `none`, HMAC (`HS*`, which would make the client secret a signing key) and anything
//! else are refused. The key is the JWKS entry with the token's `kid`, or without a `kid` the
//! only key of the right type.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A provider's published keys.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwks {
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

/// One published key (the fields of RSA and EC keys).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwk {
    #[serde(default)]
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default, rename = "use")]
    pub usage: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token uses algorithm \"{0}\", which is not accepted")]
    Algorithm(String),
    /// No key of the provider fits; the keys may have rotated (fetch them again once).
    #[error("no key of the provider matches the ID token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the ID token's signature is invalid")]
    Signature,
}

/// Checks the signature of `token` with `jwks` and returns its claims. The claims are not
/// checked here ([`super::check_id_token_claims`] does that).
pub fn verify(token: &str, jwks: &Jwks) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts".into()));
    };
    let header: Header = serde_json::from_slice(&decode(header_b64, "header")?)
        .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "critical header extensions are not understood".into(),
        ));
    }
    let (kty, algorithm): (&str, &'static dyn signature::VerificationAlgorithm) =
        match header.alg.as_str() {
            "RS256" => ("RSA", &signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => ("RSA", &signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => ("RSA", &signature::RSA_PKCS1_2048_8192_SHA512),
            "PS256" => ("RSA", &signature::RSA_PSS_2048_8192_SHA256),
            "ES256" => ("EC", &signature::ECDSA_P256_SHA256_FIXED),
            "ES384" => ("EC", &signature::ECDSA_P384_SHA384_FIXED),
            other => return Err(JwtError::Algorithm(other.to_string())),
        };
    let signature = decode(signature_b64, "signature")?;
    let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let candidates: Vec<&Jwk> = jwks
        .keys
        .iter()
        .filter(|k| k.kty == kty)
        .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == header.alg))
        .filter(|k| match &header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    let key = match candidates.as_slice() {
        [key] => *key,
        // Without a kid several keys of one type are ambiguous; with one, duplicates are.
        _ => return Err(JwtError::UnknownKey(header.kid.clone())),
    };
    let public_key = public_key_bytes(key, &header.alg)?;
    UnparsedPublicKey::new(algorithm, public_key)
        .verify(signed, &signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Value = serde_json::from_slice(&decode(payload_b64, "payload")?)
        .map_err(|e| JwtError::Malformed(format!("payload: {e}")))?;
    match claims {
        Value::Object(map) => Ok(map),
        _ => Err(JwtError::Malformed(
            "the payload is not a JSON object".into(),
        )),
    }
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| JwtError::Malformed(format!("{what}: {e}")))
}

/// The key in the form `ring` takes: DER RSAPublicKey, or an uncompressed EC point.
fn public_key_bytes(key: &Jwk, alg: &str) -> Result<Vec<u8>, JwtError> {
    let field = |value: &Option<String>, name: &str| -> Result<Vec<u8>, JwtError> {
        let text = value
            .as_deref()
            .ok_or_else(|| JwtError::Malformed(format!("the provider's key lacks \"{name}\"")))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| JwtError::Malformed(format!("the provider's key \"{name}\": {e}")))
    };
    if key.kty == "RSA" {
        let n = field(&key.n, "n")?;
        let e = field(&key.e, "e")?;
        return Ok(rsa_public_key_der(&n, &e));
    }
    let (curve, size) = match alg {
        "ES256" => ("P-256", 32),
        _ => ("P-384", 48),
    };
    if key.crv.as_deref() != Some(curve) {
        return Err(JwtError::UnknownKey(key.kid.clone()));
    }
    let x = field(&key.x, "x")?;
    let y = field(&key.y, "y")?;
    if x.len() != size || y.len() != size {
        return Err(JwtError::Malformed(
            "the provider's EC key has the wrong size".into(),
        ));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = der_integer(n);
    body.extend(der_integer(e));
    let mut out = vec![0x30];
    push_length(&mut out, body.len());
    out.extend(body);
    out
}

fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        &bytes[start..]
    };
    let mut value = Vec::with_capacity(trimmed.len() + 1);
    // A set high bit would read as negative.
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        value.push(0);
    }
    value.extend_from_slice(trimmed);
    let mut out = vec![0x02];
    push_length(&mut out, value.len());
    out.extend(value);
    out
}

fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - start) as u8);
        out.extend_from_slice(&bytes[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A P-256 key, its JWK and a signer of compact tokens.
    struct Signer {
        key: EcdsaKeyPair,
        jwk: Jwk,
    }

    impl Signer {
        fn new(kid: &str) -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            let point = key.public_key().as_ref();
            let jwk = Jwk {
                kty: "EC".into(),
                kid: Some(kid.into()),
                crv: Some("P-256".into()),
                x: Some(b64(&point[1..33])),
                y: Some(b64(&point[33..])),
                ..Jwk::default()
            };
            Signer { key, jwk }
        }

        fn sign(&self, header: &str, payload: &str) -> String {
            let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
            let sig = self
                .key
                .sign(&SystemRandom::new(), signed.as_bytes())
                .unwrap();
            format!("{signed}.{}", b64(sig.as_ref()))
        }
    }

    #[test]
    fn a_token_signed_by_a_published_key_verifies() {
        let signer = Signer::new("k1");
        let jwks = Jwks {
            keys: vec![signer.jwk.clone()],
        };
        let token = signer.sign(r#"{"alg":"ES256","kid":"k1"}"#, r#"{"sub":"alice"}"#);
        let claims = verify(&token, &jwks).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn tampered_unsigned_hmac_and_unknown_key_tokens_are_refused() {
        let signer = Signer::new("k1");
        let other = Signer::new("k2");
        let jwks = Jwks {
            keys: vec![signer.jwk.clone()],
        };
        let good = signer.sign(r#"{"alg":"ES256","kid":"k1"}"#, r#"{"sub":"alice"}"#);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_payload = b64(br#"{"sub":"admin"}"#);
        parts[1] = &forged_payload;
        assert!(matches!(
            verify(&parts.join("."), &jwks),
            Err(JwtError::Signature)
        ));
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"sub":"admin"}"#)
        );
        assert!(matches!(
            verify(&unsigned, &jwks),
            Err(JwtError::Algorithm(_))
        ));
        let hmac = signer.sign(r#"{"alg":"HS256","kid":"k1"}"#, r#"{"sub":"admin"}"#);
        assert!(matches!(verify(&hmac, &jwks), Err(JwtError::Algorithm(_))));
        let foreign = other.sign(r#"{"alg":"ES256","kid":"k2"}"#, r#"{"sub":"admin"}"#);
        assert!(matches!(
            verify(&foreign, &jwks),
            Err(JwtError::UnknownKey(_))
        ));
        // Another key under the published kid fails the signature.
        let impostor = other.sign(r#"{"alg":"ES256","kid":"k1"}"#, r#"{"sub":"admin"}"#);
        assert!(matches!(verify(&impostor, &jwks), Err(JwtError::Signature)));
        assert!(verify("a.b", &jwks).is_err());
        assert!(verify("a.b.c.d", &jwks).is_err());
    }

    #[test]
    fn rsa_keys_are_encoded_as_der() {
        // 0x80 needs a leading zero; leading zeros of the input go.
        assert_eq!(der_integer(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            der_integer(&[0x01, 0x00, 0x01]),
            vec![0x02, 0x03, 0x01, 0x00, 0x01]
        );
        let der = rsa_public_key_der(&[0xff; 256], &[1, 0, 1]);
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x0a]);
    }
}
