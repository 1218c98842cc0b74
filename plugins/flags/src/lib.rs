//! Reference policy: feature flags from the tenant's config.
//!
//! Config `flags` is `name:rule;name:rule;...`, each rule one of
//! - `percent:N` — N % of users (0..=100), by the SDK's stable
//!   [`rollout`](switchboard_plugin::rollout) hash of the flag name and user, so a user keeps
//!   their flag across nodes and rebuilds, and raising N only adds users;
//! - `users:a,b` — these users;
//! - `groups:g1,g2` — in these groups (when flags are evaluated for a group);
//! - `all`, `none`.
//!
//! Flags are returned in the order configured. A flag whose rule does not parse is returned
//! disabled and logged as a warning; a name given twice keeps its last rule.
//!
//! Messages, receipts and load use the SDK's defaults.

use switchboard_plugin::{host, rollout, Flag, FlagContext, LogLevel, Policy};

/// A flag's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// This percentage of users.
    Percent(u8),
    /// These users.
    Users(Vec<String>),
    /// Members of these groups, in a group context.
    Groups(Vec<String>),
    /// Everyone.
    All,
    /// No one.
    None,
}

impl Rule {
    /// Parses one rule (the part after `name:`).
    pub fn parse(rule: &str) -> Result<Rule, String> {
        let rule = rule.trim();
        let (kind, argument) = match rule.split_once(':') {
            Some((kind, argument)) => (kind.trim(), Some(argument)),
            None => (rule, None),
        };
        let list = |argument: &str| -> Vec<String> {
            argument
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match (kind, argument) {
            ("all", None) => Ok(Rule::All),
            ("none", None) => Ok(Rule::None),
            ("percent", Some(n)) => match n.trim().parse::<u8>() {
                Ok(n) if n <= 100 => Ok(Rule::Percent(n)),
                _ => Err(format!("percent wants 0..=100, got {n:?}")),
            },
            ("users", Some(users)) => Ok(Rule::Users(list(users))),
            ("groups", Some(groups)) => Ok(Rule::Groups(list(groups))),
            _ => Err(format!("unknown rule {rule:?}")),
        }
    }

    /// Whether flag `name` is on for `context` under this rule.
    pub fn enabled(&self, name: &str, context: &FlagContext) -> bool {
        match self {
            Rule::Percent(percent) => rollout::in_rollout(*percent, name, &context.user),
            Rule::Users(users) => users.contains(&context.user),
            Rule::Groups(groups) => context
                .group
                .as_ref()
                .is_some_and(|group| groups.contains(group)),
            Rule::All => true,
            Rule::None => false,
        }
    }
}

/// Parses config `flags`: (name, rule) in order, the last rule of a repeated name in the
/// position of its first; an unparsable rule is an `Err` with the reason.
pub fn parse_flags(config: &str) -> Vec<(String, Result<Rule, String>)> {
    let mut flags: Vec<(String, Result<Rule, String>)> = Vec::new();
    for entry in config.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, rule) = match entry.split_once(':') {
            Some((name, rule)) => (name.trim(), Rule::parse(rule)),
            None => (entry, Err("no rule: expected name:rule".to_owned())),
        };
        if name.is_empty() {
            continue;
        }
        match flags.iter_mut().find(|(existing, _)| existing == name) {
            Some(existing) => existing.1 = rule,
            None => flags.push((name.to_owned(), rule)),
        }
    }
    flags
}

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Flags;

impl Policy for Flags {
    fn evaluate_flags(&self, context: &FlagContext) -> Vec<Flag> {
        let config = host::config("flags").unwrap_or_default();
        parse_flags(&config)
            .into_iter()
            .map(|(name, rule)| {
                let enabled = match rule {
                    Ok(rule) => rule.enabled(&name, context),
                    Err(reason) => {
                        host::log(LogLevel::Warn, &format!("flag {name:?} is off: {reason}"));
                        false
                    }
                };
                Flag::new(name, enabled)
            })
            .collect()
    }
}

switchboard_plugin::export_policy!(Flags);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};
    use switchboard_plugin::{Lane, Shedding, Verdict};

    fn evaluate(user: &str, group: Option<&str>) -> Vec<(String, bool)> {
        Flags
            .evaluate_flags(&testing::flag_context(user, group))
            .into_iter()
            .map(|flag| (flag.name, flag.enabled))
            .collect()
    }

    fn on(flags: &[(String, bool)], name: &str) -> bool {
        flags
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no flag {name} in {flags:?}"))
            .1
    }

    #[test]
    fn no_config_no_flags() {
        let _host = TestHost::builder().install();
        assert!(evaluate("alice", None).is_empty());
    }

    #[test]
    fn users_groups_all_and_none() {
        let _host = TestHost::builder()
            .config(
                "flags",
                "beta:users:alice, bob; staff-room:groups:staff; everywhere:all; nowhere:none",
            )
            .install();
        let alice = evaluate("alice", Some("lobby"));
        assert_eq!(
            alice,
            [
                ("beta".to_owned(), true),
                ("staff-room".to_owned(), false),
                ("everywhere".to_owned(), true),
                ("nowhere".to_owned(), false),
            ],
            "in configured order"
        );
        let carol = evaluate("carol", Some("staff"));
        assert!(!on(&carol, "beta"));
        assert!(on(&carol, "staff-room"));
        assert!(
            !on(&evaluate("carol", None), "staff-room"),
            "no group context"
        );
    }

    #[test]
    fn percent_uses_the_sdks_stable_hash_of_flag_and_user() {
        let host = TestHost::builder()
            .config("flags", "half:percent:50")
            .install();
        let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let mut enabled = 0;
        for user in &users {
            let on = on(&evaluate(user, None), "half");
            assert_eq!(on, rollout::bucket("half", user) < 50);
            enabled += usize::from(on);
        }
        assert!((400..600).contains(&enabled), "{enabled} of 1000");

        host.set_config("flags", "none-yet:percent:0;everyone:percent:100");
        assert!(users.iter().all(|u| {
            let flags = evaluate(u, None);
            !on(&flags, "none-yet") && on(&flags, "everyone")
        }));
    }

    #[test]
    fn a_bad_rule_is_off_and_logged_and_a_repeated_name_keeps_its_last_rule() {
        let host = TestHost::builder()
            .config(
                "flags",
                "a:percent:101; b; c:sometimes; d:none; d:all; ;:all",
            )
            .install();
        assert_eq!(
            evaluate("alice", None),
            [
                ("a".to_owned(), false),
                ("b".to_owned(), false),
                ("c".to_owned(), false),
                ("d".to_owned(), true),
            ]
        );
        let warnings = host.logs();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings.iter().all(|log| log.level == LogLevel::Warn));
    }

    #[test]
    fn rules_parse() {
        assert_eq!(Rule::parse(" all "), Ok(Rule::All));
        assert_eq!(Rule::parse("percent: 7"), Ok(Rule::Percent(7)));
        assert_eq!(
            Rule::parse("users:a,,b "),
            Ok(Rule::Users(vec!["a".into(), "b".into()]))
        );
        assert!(Rule::parse("percent:-1").is_err());
        assert!(Rule::parse("all:now").is_err());
        assert!(Rule::parse("users").is_err());
    }

    #[test]
    fn other_hooks_are_the_defaults() {
        assert_eq!(
            Flags.on_message(&testing::message("g", "bob", b"hi")),
            Verdict::accept(Lane::Normal)
        );
        assert_eq!(Flags.on_load(&testing::load(1)), Shedding::ladder(1));
    }
}
