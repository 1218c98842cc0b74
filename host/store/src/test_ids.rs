//! Id constructors for tests (valid ids only; a bad one is a test bug).

use switchboard_core::{GroupId, TenantId, UserId};

pub fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub fn g(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}

pub fn u(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
