//! Prints the routing scenario a corpus file decodes to: `cargo run --example
//! show_scenario -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("usage: show_scenario FILE");
    let data = std::fs::read(&path).expect("read");
    match switchboard_fuzz::routing::Scenario::parse(&data) {
        Ok(s) => {
            println!("outbox {} page {} ({} ops)", s.outbox, s.page, s.ops.len());
            for op in &s.ops {
                println!("  {op:?}");
            }
        }
        Err(e) => println!("not a scenario: {e}"),
    }
}
