//! A minimal tenant policy plugin: rejects messages whose text contains the word configured
//! as `banned_word` (case-insensitively). Every other hook keeps the node's default.
//!
//! The node shows a plugin the first 64 bytes of a message's body, so that is where the word
//! is looked for.

use switchboard_plugin::{host, MessageInfo, Policy, Verdict};

/// The plugin: no state, configuration is read from the host on each call.
#[derive(Debug, Default)]
pub struct BannedWord;

impl Policy for BannedWord {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        if let Some(word) = host::config("banned_word") {
            let word = word.trim().to_lowercase();
            let text = String::from_utf8_lossy(&message.body_prefix).to_lowercase();
            if !word.is_empty() && text.contains(&word) {
                host::counter_add("banned_word_rejected", 1);
                return Verdict::reject(format!("messages containing {word:?} are not allowed"));
            }
        }
        switchboard_plugin::defaults::on_message(message)
    }
}

switchboard_plugin::export_policy!(BannedWord);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};
    use switchboard_plugin::Lane;

    #[test]
    fn rejects_messages_with_the_banned_word() {
        let host = TestHost::builder()
            .config("banned_word", "Spoiler")
            .install();

        let verdict = BannedWord.on_message(&testing::message("general", "alice", b"big SPOILER"));
        assert_eq!(
            verdict.reject_reason(),
            Some("messages containing \"spoiler\" are not allowed")
        );
        assert_eq!(host.counter("banned_word_rejected"), 1);

        let verdict = BannedWord.on_message(&testing::message("general", "alice", b"hello"));
        assert_eq!(verdict, Verdict::accept(Lane::Normal));
    }

    #[test]
    fn accepts_everything_without_a_banned_word() {
        let _host = TestHost::builder().install();
        let verdict = BannedWord.on_message(&testing::message("general", "alice", b"spoiler"));
        assert!(verdict.is_accept());
    }
}
