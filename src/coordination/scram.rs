//! The client side of SCRAM (RFC 5802, with SHA-256 and SHA-512 as RFC 7677 and Kafka's
//! KIP-84 use them): pure message building and checking, no I/O. The broker connection
//! ([`super::wire`]) carries the messages in `SaslAuthenticate` requests.
//!
//! ```text
//!   client-first  n,,n=<user>,r=<client nonce>
//!   server-first  r=<client nonce + server nonce>,s=<salt>,i=<iterations>
//!   client-final  c=biws,r=<nonce>,p=<proof>        proof = ClientKey XOR HMAC(StoredKey, AuthMessage)
//!   server-final  v=<server signature>               checked: the broker knows the password too
//! ```

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// The hash of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    fn digest(self) -> MessageDigest {
        match self {
            ScramHash::Sha256 => MessageDigest::sha256(),
            ScramHash::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// Kafka stores SCRAM credentials with 4096..=16384 iterations; anything far outside that is a
/// broken or hostile server (a huge count would burn the CPU before the check).
const MAX_ITERATIONS: u32 = 1_000_000;

/// Why a SCRAM exchange failed on the client side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed server message: {0}")]
    Malformed(&'static str),
    #[error("the server's nonce does not extend ours")]
    NonceMismatch,
    #[error("the server refused: {0}")]
    ServerError(String),
    #[error(
        "the server's signature is wrong: it does not know the password (or is not the broker)"
    )]
    BadServerSignature,
    #[error("iteration count {0} is outside 1..={MAX_ITERATIONS}")]
    Iterations(u32),
    #[error("crypto: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for ScramError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        ScramError::Crypto(e.to_string())
    }
}

/// A client that sent its first message and waits for the server's.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_nonce: String,
    first_bare: String,
}

/// A client that sent its final message and waits for the server's signature.
pub struct ScramFinal {
    expected_server_signature: Vec<u8>,
}

impl ScramClient {
    /// A client with a fresh random nonce.
    pub fn new(hash: ScramHash, user: &str, password: &str) -> Result<Self, ScramError> {
        let mut raw = [0u8; 24];
        openssl::rand::rand_bytes(&mut raw)?;
        // Base64 is printable and never holds ',' (the attribute separator).
        Ok(Self::with_nonce(
            hash,
            user,
            password,
            &openssl::base64::encode_block(&raw),
        ))
    }

    /// A client with a given nonce (tests use the RFCs' examples).
    pub fn with_nonce(hash: ScramHash, user: &str, password: &str, nonce: &str) -> Self {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            password: password.to_owned(),
            client_nonce: nonce.to_owned(),
            first_bare: format!("n={user},r={nonce}"),
        }
    }

    /// The client-first message (no channel binding, no authorization identity).
    pub fn first_message(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// Checks the server-first message and answers it with the client-final message.
    pub fn answer(self, server_first: &[u8]) -> Result<(String, ScramFinal), ScramError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = attribute(server_first, 'e') {
            return Err(ScramError::ServerError(e.to_owned()));
        }
        let nonce = attribute(server_first, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = attribute(server_first, 's').ok_or(ScramError::Malformed("no salt"))?;
        let salt = openssl::base64::decode_block(salt)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = attribute(server_first, 'i')
            .ok_or(ScramError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count is not a number"))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let digest = self.hash.digest();
        let mut salted = vec![0u8; digest.size()];
        openssl::pkcs5::pbkdf2_hmac(
            self.password.as_bytes(),
            &salt,
            iterations as usize,
            digest,
            &mut salted,
        )?;
        let client_key = hmac(digest, &salted, b"Client Key")?;
        let stored_key = openssl::hash::hash(digest, &client_key)?;
        // "biws" is base64("n,,"): the GS2 header of the first message.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(digest, &stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(digest, &salted, b"Server Key")?;
        let expected_server_signature = hmac(digest, &server_key, auth_message.as_bytes())?;
        let message = format!(
            "{without_proof},p={}",
            openssl::base64::encode_block(&proof)
        );
        Ok((
            message,
            ScramFinal {
                expected_server_signature,
            },
        ))
    }
}

impl ScramFinal {
    /// Checks the server-final message: the broker proves it knows the password as well.
    pub fn verify(self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = attribute(server_final, 'e') {
            return Err(ScramError::ServerError(e.to_owned()));
        }
        let v = attribute(server_final, 'v').ok_or(ScramError::Malformed("no verifier"))?;
        let got = openssl::base64::decode_block(v)
            .map_err(|_| ScramError::Malformed("verifier is not base64"))?;
        if got.len() == self.expected_server_signature.len()
            && openssl::memcmp::eq(&got, &self.expected_server_signature)
        {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

fn hmac(digest: MessageDigest, key: &[u8], data: &[u8]) -> Result<Vec<u8>, ScramError> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(digest, &key)?;
    signer.update(data)?;
    Ok(signer.sign_to_vec()?)
}

/// The value of attribute `name` (`name=value`) in a comma-separated SCRAM message.
fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn the_rfc_7677_example_exchange() {
        let client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.first_message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, last) = client.answer(server_first.as_bytes()).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        last.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn a_server_that_does_not_know_the_password_is_caught() {
        let client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (_, last) = client.answer(server_first.as_bytes()).unwrap();
        let forged = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            last.verify(forged.as_bytes()),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let cases: [(&str, ScramError); 5] = [
            (
                "r=other-nonce,s=QSXCR+Q6sek8bf92,i=4096",
                ScramError::NonceMismatch,
            ),
            ("r=abc,s=QSXCR+Q6sek8bf92,i=4096", ScramError::NonceMismatch),
            (
                "r=abcdef,s=QSXCR+Q6sek8bf92,i=4000000000",
                ScramError::Iterations(4_000_000_000),
            ),
            ("r=abcdef,i=4096", ScramError::Malformed("no salt")),
            (
                "e=invalid-proof",
                ScramError::ServerError("invalid-proof".into()),
            ),
        ];
        for (server_first, want) in cases {
            let client = ScramClient::with_nonce(ScramHash::Sha512, "u", "p", "abc");
            assert_eq!(
                client.answer(server_first.as_bytes()).err(),
                Some(want),
                "{server_first}"
            );
        }
    }

    #[test]
    fn names_with_separators_are_escaped() {
        let client = ScramClient::with_nonce(ScramHash::Sha256, "a=b,c", "p", "n");
        assert_eq!(client.first_message(), "n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn random_nonces_differ_and_hold_no_separator() {
        let a = ScramClient::new(ScramHash::Sha512, "u", "p").unwrap();
        let b = ScramClient::new(ScramHash::Sha512, "u", "p").unwrap();
        assert_ne!(a.client_nonce, b.client_nonce);
        assert!(!a.client_nonce.contains(','));
    }
}
