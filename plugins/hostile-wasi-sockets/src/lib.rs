//! Hostile: `on-message` opens a TCP connection with `std::net`, which makes the component
//! import `wasi:sockets`. The node must refuse to load it. The other hooks are the SDK's
//! defaults.

use std::net::TcpStream;

use switchboard_plugin::{MessageInfo, Policy, Verdict};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct WasiSockets;

impl Policy for WasiSockets {
    fn on_message(&self, _message: &MessageInfo) -> Verdict {
        // A TEST-NET-1 address (RFC 5737): nothing answers there, even if this ever ran.
        match TcpStream::connect("192.0.2.1:80") {
            Ok(_) => Verdict::reject("opened a socket"),
            Err(_) => Verdict::accept(switchboard_plugin::Lane::Normal),
        }
    }
}

switchboard_plugin::export_policy!(WasiSockets);
