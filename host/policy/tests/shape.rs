//! An upload's shape is bounded before it is compiled (issue 15, failure 6): modules built to
//! be slow to compile (150k empty functions, 100k nested blocks, 100k exports…) are refused
//! with `LoadError::TooComplex` in milliseconds, and every real plugin is far inside the
//! bounds. `--nocapture` prints each plugin's shape and each refusal's time (the figures in
//! docs/plugins.md and docs/reliability.md).

use std::time::{Duration, Instant};

use switchboard_policy::{LoadError, PolicyEngine, PolicyLimits, Shape, ShapeLimits};

fn engine() -> PolicyEngine {
    PolicyEngine::new(PolicyLimits {
        max_instances: 16,
        ..PolicyLimits::default()
    })
    .unwrap()
}

/// Generous: the scan takes milliseconds; a compile of these modules took 40–88 s.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// A component wrapping one core module whose fields are `fields`.
fn component(fields: &str) -> Vec<u8> {
    wat::parse_str(format!("(component (core module {fields}))")).unwrap()
}

#[test]
fn every_real_plugin_is_well_within_the_shape_limits() {
    let limits = ShapeLimits::default();
    let mut largest = Shape::default();
    let interpreted = |name: &str| {
        plugins_artifacts::INTERPRETED
            .iter()
            .any(|(n, _)| *n == name)
    };
    for (name, path) in plugins_artifacts::ALL {
        if interpreted(name) {
            // An embedded interpreter: `interpreted_plugins_fit_the_limits_they_were_raised_to`.
            continue;
        }
        let wasm = std::fs::read(path).unwrap();
        let shape = Shape::measure(&wasm, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name:>22}: {} bytes, {shape:?}", wasm.len());
        largest = Shape {
            functions: largest.functions.max(shape.functions),
            exports: largest.exports.max(shape.exports),
            imports: largest.imports.max(shape.imports),
            globals: largest.globals.max(shape.globals),
            types: largest.types.max(shape.types),
            max_nesting: largest.max_nesting.max(shape.max_nesting),
            max_function_bytes: largest.max_function_bytes.max(shape.max_function_bytes),
            max_locals: largest.max_locals.max(shape.max_locals),
            segments: largest.segments.max(shape.segments),
        };
    }
    eprintln!("largest of each: {largest:?}");
    // At least 4x headroom on every bound, so a plugin several times larger than ours loads.
    let within = |what: &str, used: u64, max: u64| {
        assert!(
            used * 4 <= max,
            "{what}: a real plugin uses {used} of {max}"
        );
    };
    within("functions", largest.functions, limits.max_functions);
    within("exports", largest.exports, limits.max_exports);
    within("imports", largest.imports, limits.max_imports);
    within("globals", largest.globals, limits.max_globals);
    within("types", largest.types, limits.max_types);
    within("nesting", largest.max_nesting, limits.max_nesting);
    within(
        "function bytes",
        largest.max_function_bytes,
        limits.max_function_bytes,
    );
    within("locals", largest.max_locals, limits.max_locals);
    within("segments", largest.segments, limits.max_segments);
}

/// The Python and JavaScript plugins carry their interpreter (CPython, QuickJS): thousands of
/// functions. They fit the default shape limits, which were raised for them only as far as
/// measured (docs/plugins.md §6), and print their shape for the docs.
#[test]
fn interpreted_plugins_fit_the_limits_they_were_raised_to() {
    let limits = ShapeLimits::default();
    for (name, _) in plugins_artifacts::INTERPRETED {
        let (_, path) = plugins_artifacts::ALL
            .iter()
            .find(|(n, _)| n == name)
            .unwrap();
        let wasm = std::fs::read(path).unwrap();
        let shape = Shape::measure(&wasm, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name:>22}: {} bytes, {shape:?}", wasm.len());
        assert!(
            wasm.len() <= PolicyLimits::default().max_plugin_bytes,
            "{name}: {} bytes",
            wasm.len()
        );
    }
}

/// Loads `wasm`, expecting a `TooComplex` refusal about `what`, quickly.
#[track_caller]
fn refused(engine: &PolicyEngine, label: &str, wasm: &[u8], what: &str) {
    let started = Instant::now();
    let err = engine.load(wasm).err();
    let elapsed = started.elapsed();
    eprintln!("{label}: {} bytes, refused in {elapsed:?}", wasm.len());
    match err {
        Some(LoadError::TooComplex {
            what: w,
            count,
            max,
        }) => {
            assert_eq!(w, what, "{label}");
            assert!(count > max, "{label}: {count} vs {max}");
        }
        other => panic!("{label}: expected TooComplex({what}), got {other:?}"),
    }
    assert!(
        elapsed < REFUSED_WITHIN,
        "{label}: refused after {elapsed:?}"
    );
}

#[test]
fn modules_shaped_to_be_slow_to_compile_are_refused_before_compiling() {
    let engine = engine();

    let funcs = "(func)".repeat(150_000);
    refused(
        &engine,
        "150k empty functions",
        &component(&funcs),
        "functions",
    );

    let nested = |depth: usize| {
        component(&format!(
            "(func {} {})",
            "block ".repeat(depth),
            "end ".repeat(depth)
        ))
    };
    // 200k nested blocks are 600 KB of one function: refused for that first.
    refused(
        &engine,
        "200k nested blocks",
        &nested(200_000),
        "bytes in one function",
    );
    refused(
        &engine,
        "50k nested blocks",
        &nested(50_000),
        "nested blocks",
    );

    let exports: String = (0..100_000)
        .map(|i| format!("(export \"e{i}\" (func $f))"))
        .collect();
    refused(
        &engine,
        "100k exports",
        &component(&format!("(func $f) {exports}")),
        "exports",
    );

    let globals = "(global i32 (i32.const 0))".repeat(50_000);
    refused(&engine, "50k globals", &component(&globals), "globals");

    let types: String = (0..20_000)
        .map(|i| format!("(type (func (param {})))", "i32 ".repeat(1 + i % 7)))
        .collect();
    refused(&engine, "20k types", &component(&types), "types");

    let locals = format!("(func (local {}))", "i64 ".repeat(50_000));
    refused(
        &engine,
        "50k locals",
        &component(&locals),
        "locals in one function",
    );

    let body = format!("(func {})", "i32.const 1 drop ".repeat(200_000));
    refused(
        &engine,
        "a 600 KB function",
        &component(&body),
        "bytes in one function",
    );
}

#[test]
fn a_module_within_the_bounds_is_not_refused_for_its_shape() {
    // 1,000 functions nested 100 deep: within every bound, so what answers is the world
    // check (it exports no policy), not the shape check.
    let funcs = format!("(func {} {})", "block ".repeat(100), "end ".repeat(100)).repeat(1_000);
    match engine().load(&component(&funcs)) {
        Err(LoadError::WrongWorld(_)) => {}
        other => panic!("expected WrongWorld, got {other:?}"),
    }
}
