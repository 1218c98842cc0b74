#![no_main]

#[global_allocator]
static ALLOC: switchboard_fuzz::alloc::Tracking = switchboard_fuzz::alloc::Tracking;

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::routing_sim::run(data));
