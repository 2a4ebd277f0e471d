//! Bearer-token authentication of RenderService calls: the farm's operators hand out API tokens
//! (a file, one per line, usually mounted from a Secret), and every call must carry one as
//! `authorization: Bearer TOKEN`. Only the tokens' SHA-256 digests are kept, compared in
//! constant time. The file is read again while serving (`crate::reload`), so tokens are added
//! and revoked without a restart.

use sha2::{Digest, Sha256};
use std::sync::{Arc, PoisonError, RwLock};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// Shortest token accepted: 128 bits as hex.
pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFileError {
    #[error("line {line}: a token must be at least {MIN_TOKEN_LEN} characters, printable ASCII without spaces")]
    BadToken { line: usize },
    #[error("no tokens in it (blank lines and lines starting with # are skipped)")]
    Empty,
}

/// The tokens a farm accepts. Clones share one set, so a reload reaches the interceptor.
#[derive(Clone, Debug)]
pub struct ApiTokens {
    digests: Arc<RwLock<Vec<[u8; 32]>>>,
}

/// The digests of a token file's tokens: one per line; blank lines and `#` comments are skipped.
fn digests_of(text: &str) -> Result<Vec<[u8; 32]>, TokenFileError> {
    let mut digests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenFileError::BadToken { line: index + 1 });
        }
        digests.push(Sha256::digest(token.as_bytes()).into());
    }
    if digests.is_empty() {
        return Err(TokenFileError::Empty);
    }
    Ok(digests)
}

impl ApiTokens {
    /// Reads a token file's text: one token per line; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        Ok(Self { digests: Arc::new(RwLock::new(digests_of(text)?)) })
    }

    /// Replaces the tokens, for every clone, with those of a token file's new text; returns
    /// how many there are now. A bad text leaves the tokens as they were.
    pub fn replace(&self, text: &str) -> Result<usize, TokenFileError> {
        let digests = digests_of(text)?;
        let count = digests.len();
        *self.digests.write().unwrap_or_else(PoisonError::into_inner) = digests;
        Ok(count)
    }

    /// Accepts a call whose `authorization` metadata is `Bearer` and one of the tokens.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated("authorization: missing; send \"Bearer <token>\""));
        };
        // The scheme's name is case-insensitive (RFC 9110, 11.1): "bearer" is as good.
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Every digest is compared whole, so the time taken tells nothing of how close a guess was.
        let digests = self.digests.read().unwrap_or_else(PoisonError::into_inner);
        let known = digests.iter().fold(false, |found, listed| {
            let difference = listed.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (difference == 0)
        });
        if known { Ok(()) } else { Err(Status::unauthenticated("authorization: unknown token")) }
    }
}

/// The interceptor in front of RenderService: checks the token when the farm has tokens.
#[derive(Clone, Debug, Default)]
pub struct Authenticate(pub Option<ApiTokens>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            Some(tokens) => tokens.check(request.metadata()).map(|()| request),
            None => Ok(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "3f7a0c9e5b2d4e61a8f0c3b7d9e2a4f6";

    fn with_authorization(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    #[test]
    fn a_listed_token_passes_and_anything_else_is_unauthenticated() {
        let tokens = ApiTokens::parse(&format!("# operators\n\n{TOKEN}\n  {}  \n", "b".repeat(40))).unwrap();
        assert!(tokens.check(&with_authorization(&format!("Bearer {TOKEN}"))).is_ok());
        assert!(tokens.check(&with_authorization(&format!("Bearer {}", "b".repeat(40)))).is_ok());
        for (metadata, says) in [
            (MetadataMap::new(), "missing"),
            (with_authorization(TOKEN), "expected \"Bearer"),
            (with_authorization(&format!("Basic {TOKEN}")), "expected \"Bearer"),
            (with_authorization(&format!("Bearer {}", &TOKEN[1..])), "unknown token"),
            (with_authorization("Bearer "), "unknown token"),
        ] {
            let status = tokens.check(&metadata).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(says), "{status:?}");
        }
    }

    /// The scheme is named in any case, as HTTP has it; the token is exact.
    #[test]
    fn the_bearer_scheme_is_named_in_any_case() {
        let tokens = ApiTokens::parse(TOKEN).unwrap();
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert!(tokens.check(&with_authorization(&format!("{scheme} {TOKEN}"))).is_ok(), "{scheme}");
        }
        assert!(tokens.check(&with_authorization(&format!("Bearer {}", TOKEN.to_uppercase()))).is_err());
    }

    #[test]
    fn token_files_with_short_or_spaced_tokens_or_none_are_refused_naming_the_line() {
        assert_eq!(ApiTokens::parse(&format!("{TOKEN}\nshort\n")).unwrap_err(), TokenFileError::BadToken { line: 2 });
        assert_eq!(ApiTokens::parse(&format!("# a\n{TOKEN} {TOKEN}\n")).unwrap_err(), TokenFileError::BadToken { line: 2 });
        assert_eq!(ApiTokens::parse("# only a comment\n\n").unwrap_err(), TokenFileError::Empty);
    }

    #[test]
    fn new_tokens_replace_the_old_everywhere_and_a_bad_file_keeps_them() {
        let other = "c".repeat(MIN_TOKEN_LEN);
        let tokens = ApiTokens::parse(TOKEN).unwrap();
        let interceptor_copy = tokens.clone();
        let accepts = |token: &str| interceptor_copy.check(&with_authorization(&format!("Bearer {token}"))).is_ok();
        assert_eq!(tokens.replace(&format!("{other}\n")), Ok(1));
        assert!(accepts(&other) && !accepts(TOKEN), "the old token is revoked, the new one accepted");
        assert_eq!(tokens.replace("short\n"), Err(TokenFileError::BadToken { line: 1 }));
        assert_eq!(tokens.replace(""), Err(TokenFileError::Empty));
        assert!(accepts(&other) && !accepts(TOKEN), "a bad file keeps the tokens in force");
        assert_eq!(tokens.replace(&format!("{TOKEN}\n{other}\n")), Ok(2));
        assert!(accepts(&other) && accepts(TOKEN));
    }

    #[test]
    fn without_tokens_every_call_passes() {
        use tonic::service::Interceptor;
        assert!(Authenticate(None).call(Request::new(())).is_ok());
        let tokens = ApiTokens::parse(TOKEN).unwrap();
        assert!(Authenticate(Some(tokens)).call(Request::new(())).is_err());
    }
}
