//! A `Hello` printed with `{:?}` (as a log line or a test failure does) never shows its token:
//! the token is a bearer credential.

use switchboard_core::PresenceState;
use switchboard_wire::{ClientFrame, GroupCursor, Hello};

#[test]
fn hello_debug_never_prints_the_token() {
    let token =
        "sb1.eyJ0IjoiYWNtZSIsInUiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJlLXNlY3JldA";
    let hello = Hello {
        token: token.to_owned(),
        presence: PresenceState::Background,
        cursors: vec![GroupCursor {
            group: "general".into(),
            seq: 41,
        }],
        client: "chat/0.1".into(),
    };
    for printed in [
        format!("{hello:?}"),
        format!("{hello:#?}"),
        format!("{:?}", ClientFrame::Hello(hello.clone())),
    ] {
        assert!(!printed.contains(token), "{printed}");
        // No part of it either: neither the claims nor the signature.
        for part in token.split('.').skip(1) {
            assert!(!printed.contains(part), "{printed}");
        }
        assert!(
            printed.contains(&format!("<redacted, {} bytes>", token.len())),
            "{printed}"
        );
        // The rest is still there for the log's reader.
        assert!(printed.contains("Background"), "{printed}");
        assert!(
            printed.contains("general") && printed.contains("41"),
            "{printed}"
        );
        assert!(printed.contains("chat/0.1"), "{printed}");
    }
}
