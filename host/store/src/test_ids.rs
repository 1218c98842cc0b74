//! Id constructors for the crate's tests (valid ids only; a bad one is a test bug).

use switchboard_core::{GroupId, TenantId, UserId};

pub(crate) fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub(crate) fn g(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}

pub(crate) fn u(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
