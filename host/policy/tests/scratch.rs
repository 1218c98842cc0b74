use std::time::Instant;
use switchboard_policy::*;
#[test]
fn scratch() {
    for fuel in [1_000_000u64, 5_000_000, 10_000_000, 100_000_000] {
        let engine = PolicyEngine::new(PolicyLimits {
            max_instances: 16,
            fuel_per_call: fuel,
            deadline: std::time::Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap();
        for name in [
            "hostile-memory",
            "hostile-recursion",
            "hostile-huge-output",
            "hostile-loop",
        ] {
            let path = plugins_artifacts::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1;
            let p = engine.load(&std::fs::read(path).unwrap()).unwrap();
            let t = TenantPolicy::new(&p, "x", Default::default());
            let m = MessageInfo {
                group: "g".into(),
                sender: "s".into(),
                body_size: 2,
                body_prefix: b"hi".to_vec(),
                group_size: 2,
                connected_members: 1,
            };
            let t0 = Instant::now();
            let d = t.on_message(&m);
            println!(
                "fuel {fuel} {name}: {:?} in {:?} mem {}",
                d.source,
                t0.elapsed(),
                t.stats().memory_peak_bytes
            );
        }
    }
}
