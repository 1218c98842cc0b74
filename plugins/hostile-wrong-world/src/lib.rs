//! Hostile: a component of another world (`hostile:wrong-world`, see `wit/world.wit`): it
//! exports `hostile:wrong-world/policy@0.1.0` instead of `switchboard:policy/policy@0.1.0`.
//! The node must refuse to load it, with a clear error. It does not use the SDK.

#[allow(unsafe_code, missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "wrong-world",
    });
}

use bindings::exports::hostile::wrong_world::policy::Guest;

/// The export's implementation.
#[derive(Debug)]
pub struct WrongWorld;

impl Guest for WrongWorld {
    fn on_message(body: String) -> bool {
        !body.is_empty()
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::{bindings, WrongWorld};
    bindings::export!(WrongWorld with_types_in bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_non_empty_bodies() {
        assert!(WrongWorld::on_message("hi".into()));
        assert!(!WrongWorld::on_message(String::new()));
    }
}
