//! Keys: sessiongate's own signing keys and the JWKS it publishes (`signing`), and the
//! issuers' key sets it verifies their tokens with (`issuer`, fetched and kept fresh; `jwks`,
//! parsed defensively).

mod der;
pub mod issuer;
mod jwk_private;
pub mod jwks;
pub mod signing;

pub use signing::{KeyError, KeyKind, SigningKey, SigningKeys};
