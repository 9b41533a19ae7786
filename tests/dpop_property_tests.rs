//! Property tests of DPoP validation: no mutation of a valid proof is ever accepted, and no
//! input, however malformed, panics the parser or the validator.

mod support;

use std::sync::OnceLock;

use proptest::prelude::*;
use support::dpop::{ClientKey, local_validator, proof};
use token_service::backends::clock::ManualClock;
use token_service::context::CallContext;
use token_service::dpop::{DpopError, DpopSettings, DpopValidator, ProofRequest, proof as parser};

const NOW: u64 = 1_800_000_000;
const URI: &str = "https://server.example.com/token";

struct World {
    runtime: tokio::runtime::Runtime,
    validator: DpopValidator,
    keys: Vec<ClientKey>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (validator, _) =
            local_validator(dir.path(), DpopSettings::default(), ManualClock::new(NOW));
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            validator,
            keys: ["ES256", "ES384", "PS256", "EdDSA"]
                .into_iter()
                .map(ClientKey::generate)
                .collect(),
            _dir: dir,
        }
    })
}

fn validate(proof: &str) -> Result<(), DpopError> {
    let world = world();
    world
        .runtime
        .block_on(world.validator.validate(
            &CallContext::new(),
            ProofRequest {
                proof,
                method: "POST",
                uri: URI,
                access_token: None,
            },
        ))
        .map(|_| ())
}

/// One edit of a proof's text.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Swap(usize, usize),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        let len = bytes.len().max(1);
        match *edit {
            Edit::Replace(i, b) if !bytes.is_empty() => bytes[i % len] = b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % len);
            }
            Edit::Swap(i, j) if !bytes.is_empty() => bytes.swap(i % len, j % len),
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop::sample::select(b"AQgw09-_.=+/ ,eyJ{}\"".to_vec());
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A fresh valid proof, then one to four edits of its text: never accepted (unless the
    /// edits cancel out and the text is the original, which is then not presented).
    #[test]
    fn mutated_proofs_are_never_accepted(key in 0usize..4, edits in proptest::collection::vec(edit(), 1..5)) {
        let original = proof(&world().keys[key], "POST", URI, NOW);
        let mutated = apply(&original, &edits);
        prop_assume!(mutated != original);
        prop_assert!(validate(&mutated).is_err(), "accepted a mutation: {edits:?}");
    }

    /// Arbitrary text: a typed refusal from the parser, never a panic.
    #[test]
    fn arbitrary_text_never_panics(input in ".{0,600}") {
        let _ = parser::parse(&input, 8192, &token_service::backends::Algorithm::SIGNING);
        prop_assert!(validate(&input).is_err());
    }

    /// Three base64url-ish segments reach the JSON and claim checks.
    #[test]
    fn structured_garbage_never_panics(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)) {
        prop_assert!(validate(&parts.join(".")).is_err());
    }

    /// Arbitrary bytes as JSON header and claims, correctly encoded.
    #[test]
    fn arbitrary_json_segments_never_panic(header in proptest::collection::vec(any::<u8>(), 0..200),
                                            claims in proptest::collection::vec(any::<u8>(), 0..200)) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!("{}.{}.{}", b64.encode(&header), b64.encode(&claims), b64.encode([1u8; 64]));
        prop_assert!(validate(&input).is_err());
    }
}

/// The property above is not vacuous: the proofs it mutates are accepted as they are.
#[test]
fn unmutated_proofs_are_accepted() {
    for key in &world().keys {
        validate(&proof(key, "POST", URI, NOW)).unwrap();
    }
}
