//! What an upload is made of, counted before anything compiles it.
//!
//! Compiling costs far more than the upload's size suggests when the module is built to make
//! it so: 150,000 empty functions took a minute and ~950 MB to compile, 100,000 nested blocks
//! 40 s, 100,000 exports 78 s (issue 15). So `load` first reads the binary once with
//! wasmparser (no validation, no compilation: a linear scan, milliseconds for the largest
//! upload) and refuses one whose counts are beyond what real plugins need, with
//! [`LoadError::TooComplex`] naming the count.
//!
//! The defaults ([`ShapeLimits::default`]) are set from the real plugins (measured by
//! `tests/shape.rs`, which prints every plugin's shape and checks that each is well within
//! them): the largest Rust plugin uses at most a quarter of each bound, most far less (480
//! functions of 16,000; 81 exports of 6,000; nesting 22 of 1,000). The Python and JavaScript
//! plugins carry an interpreter; the bounds were raised as far as CPython needs, no further.

use wasmparser::{Operator, Parser, Payload};

use crate::load::LoadError;

/// Bounds on an upload's shape, summed over every core module and component inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Core functions defined (with a body). Default 16,000.
    pub max_functions: u64,
    /// Exports, core and component. Default 6,000.
    pub max_exports: u64,
    /// Imports, core and component. Default 3,000.
    pub max_imports: u64,
    /// Core globals. Default 1,200.
    pub max_globals: u64,
    /// Types, core and component. Default 5,000.
    pub max_types: u64,
    /// Nesting of blocks (`block`, `loop`, `if`, `try_table`) in one function (a Rust `match`
    /// of N arms nests N blocks). Default 1,000.
    pub max_nesting: u64,
    /// Bytes of one function body. Default 512 KiB.
    pub max_function_bytes: u64,
    /// Locals declared by one function. Default 10,000.
    pub max_locals: u64,
    /// Core data and element segments. Default 10,000.
    pub max_segments: u64,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        ShapeLimits {
            // Raised for Python plugins, as far as measured (CPython: 13,491 functions,
            // 4,481 exports, 2,436 imports, 871 globals, a 416 KiB function; Rust plugins:
            // at most 480, 81, 194, 28 and 6 KiB). docs/plugins.md §6 and §15.
            max_functions: 16_000,
            max_exports: 6_000,
            max_imports: 3_000,
            max_globals: 1_200,
            max_types: 5_000,
            max_nesting: 1_000,
            max_function_bytes: 512 << 10,
            max_locals: 10_000,
            max_segments: 10_000,
        }
    }
}

/// What an upload is made of: the counts [`ShapeLimits`] bounds (each the total over the
/// whole binary, except the per-function ones, which are the largest function's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    pub functions: u64,
    pub exports: u64,
    pub imports: u64,
    pub globals: u64,
    pub types: u64,
    pub max_nesting: u64,
    pub max_function_bytes: u64,
    pub max_locals: u64,
    pub segments: u64,
}

fn malformed(e: wasmparser::BinaryReaderError) -> LoadError {
    LoadError::Invalid(format!("malformed binary: {e}"))
}

impl Shape {
    /// Reads `wasm` once and counts; stops at the first count over `limits`, so a hostile
    /// module costs at most the scan up to its first excess.
    pub fn measure(wasm: &[u8], limits: &ShapeLimits) -> Result<Shape, LoadError> {
        let mut shape = Shape::default();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(malformed)? {
                Payload::FunctionSection(s) => {
                    shape.functions += u64::from(s.count());
                    over("functions", shape.functions, limits.max_functions)?;
                }
                Payload::ExportSection(s) => {
                    shape.exports += u64::from(s.count());
                    over("exports", shape.exports, limits.max_exports)?;
                }
                Payload::ComponentExportSection(s) => {
                    shape.exports += u64::from(s.count());
                    over("exports", shape.exports, limits.max_exports)?;
                }
                Payload::ImportSection(s) => {
                    shape.imports += u64::from(s.count());
                    over("imports", shape.imports, limits.max_imports)?;
                }
                Payload::ComponentImportSection(s) => {
                    shape.imports += u64::from(s.count());
                    over("imports", shape.imports, limits.max_imports)?;
                }
                Payload::GlobalSection(s) => {
                    shape.globals += u64::from(s.count());
                    over("globals", shape.globals, limits.max_globals)?;
                }
                Payload::TypeSection(s) => {
                    shape.types += u64::from(s.count());
                    over("types", shape.types, limits.max_types)?;
                }
                Payload::ComponentTypeSection(s) => {
                    shape.types += u64::from(s.count());
                    over("types", shape.types, limits.max_types)?;
                }
                Payload::CoreTypeSection(s) => {
                    shape.types += u64::from(s.count());
                    over("types", shape.types, limits.max_types)?;
                }
                Payload::DataSection(s) => {
                    shape.segments += u64::from(s.count());
                    over(
                        "data and element segments",
                        shape.segments,
                        limits.max_segments,
                    )?;
                }
                Payload::ElementSection(s) => {
                    shape.segments += u64::from(s.count());
                    over(
                        "data and element segments",
                        shape.segments,
                        limits.max_segments,
                    )?;
                }
                Payload::CodeSectionEntry(body) => shape.function(body, limits)?,
                _ => {}
            }
        }
        Ok(shape)
    }

    fn function(
        &mut self,
        body: wasmparser::FunctionBody<'_>,
        limits: &ShapeLimits,
    ) -> Result<(), LoadError> {
        let range = body.range();
        let bytes = range.end.saturating_sub(range.start);
        self.max_function_bytes = self.max_function_bytes.max(bytes);
        over(
            "bytes in one function",
            self.max_function_bytes,
            limits.max_function_bytes,
        )?;
        let mut locals = 0u64;
        for group in body.get_locals_reader().map_err(malformed)? {
            let (count, _) = group.map_err(malformed)?;
            locals += u64::from(count);
            over("locals in one function", locals, limits.max_locals)?;
        }
        self.max_locals = self.max_locals.max(locals);
        let mut depth = 0u64;
        let mut ops = body.get_operators_reader().map_err(malformed)?;
        while !ops.eof() {
            match ops.read().map_err(malformed)? {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::TryTable { .. } => {
                    depth += 1;
                    self.max_nesting = self.max_nesting.max(depth);
                    over("nested blocks", depth, limits.max_nesting)?;
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

fn over(what: &'static str, count: u64, max: u64) -> Result<(), LoadError> {
    if count > max {
        return Err(LoadError::TooComplex { what, count, max });
    }
    Ok(())
}
